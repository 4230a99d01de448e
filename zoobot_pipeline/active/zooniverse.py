"""Upload a subject manifest into a Zooniverse subject set with panoptes-client, resumably.

Dry run by default: :func:`upload_manifest` reads the manifest and the state file and reports what it would upload,
contacting nobody. With ``dry_run=False`` it logs in at ``endpoint`` with credentials from the environment only,
``PANOPTES_USERNAME`` + ``PANOPTES_PASSWORD`` (a Zooniverse account) or ``PANOPTES_CLIENT_ID`` +
``PANOPTES_CLIENT_SECRET`` (an OAuth application: client-credentials grant). They go to panoptes-client and nowhere
else: never printed, logged or written (``repr`` hides them too). It then checks that the subject set belongs to the
project, and for every manifest row not yet in the state file creates a subject (metadata = the manifest row, as the
Zooniverse uploaders do; the image PUT to the signed URL Panoptes returns) and links subjects to the set in batches.

State file ``MANIFEST_DIR/upload-state-{subject_set}.json`` (JSON, rewritten atomically after every subject and every
linked batch)::

    {"endpoint": ..., "project": "12", "subject_set": "34",
     "subjects": {"<id_str>": {"subject_id": "5678", "linked": true}, ...}}

A failure part way raises :class:`UploadError` saying what failed and where the state file is (or that none was
written yet, when nothing was created); an endpoint that does not answer as Panoptes does is named as such.
A rerun after a failure never creates a subject the state file knows: it links those created but not yet linked,
then uploads the rest. Two gaps remain, both outside this module's reach: a subject that Panoptes created but whose
response never arrived is unknown to the state file and is created again (at most one per interruption), and
panoptes-client (1.7) retries a failed image PUT five times and then drops the error without raising.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoobot_pipeline.active.manifest import MANIFEST_FILE, ManifestRow, read_manifest
from zoobot_pipeline.errors import UploadError
from zoobot_pipeline.io import write_json_atomic

__all__ = [
    "DEFAULT_ENDPOINT", "Credentials", "UploadError", "UploadReport", "load_state", "state_path", "upload_manifest",
]

DEFAULT_ENDPOINT = "https://www.zooniverse.org"
LINK_BATCH_SIZE = 100


@dataclass(frozen=True)
class Credentials:
    """Panoptes credentials: a username and password, or an OAuth client id and secret. Secrets stay out of repr."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        """Read ``PANOPTES_USERNAME``/``PANOPTES_PASSWORD``, else ``PANOPTES_CLIENT_ID``/``PANOPTES_CLIENT_SECRET``."""
        env = os.environ if env is None else env
        if env.get("PANOPTES_USERNAME") and env.get("PANOPTES_PASSWORD"):
            return cls(username=env["PANOPTES_USERNAME"], password=env["PANOPTES_PASSWORD"])
        if env.get("PANOPTES_CLIENT_ID") and env.get("PANOPTES_CLIENT_SECRET"):
            return cls(client_id=env["PANOPTES_CLIENT_ID"], client_secret=env["PANOPTES_CLIENT_SECRET"])
        raise ValueError("no Zooniverse credentials: set PANOPTES_USERNAME and PANOPTES_PASSWORD (or "
                         "PANOPTES_CLIENT_ID and PANOPTES_CLIENT_SECRET) in the environment")

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``panoptes_client.Panoptes``."""
        if self.username and self.password:
            return {"username": self.username, "password": self.password}
        if self.client_id and self.client_secret:
            return {"client_id": self.client_id, "client_secret": self.client_secret}
        raise ValueError("credentials need a username and password, or a client id and secret")


@dataclass
class UploadReport:
    """What an upload did (or, in a dry run, would do)."""

    manifest: Path
    state_file: Path
    dry_run: bool
    total: int
    already_uploaded: int
    to_upload: list[ManifestRow]
    to_link: int
    created: int = 0
    linked: int = 0


def state_path(manifest_dir: str | Path, subject_set_id: int | str) -> Path:
    """Where the upload state of ``manifest_dir`` into one subject set lives."""
    return Path(manifest_dir) / f"upload-state-{subject_set_id}.json"


def load_state(path: str | Path, endpoint: str, project_id: int | str, subject_set_id: int | str) -> dict[str, Any]:
    """The state file's contents, or a fresh state; a file recording another endpoint or project is an error."""
    path = Path(path)
    target = {"endpoint": endpoint, "project": str(project_id), "subject_set": str(subject_set_id)}
    if not path.exists():
        return {**target, "subjects": {}}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # a directory, unreadable, not UTF-8, not JSON
        raise ValueError(f"{path}: unreadable upload state ({err}); it records which subjects were uploaded: restore "
                         "it, or move it away to upload every subject again") from err
    if not isinstance(state, dict) or not isinstance(state.get("subjects"), dict):
        raise ValueError(f"{path}: upload state has no 'subjects' mapping")
    broken = [id_str for id_str, entry in state["subjects"].items()
              if not (isinstance(entry, dict) and isinstance(entry.get("subject_id"), str)
                      and isinstance(entry.get("linked"), bool))]
    if broken:
        raise ValueError(f"{path}: upload state entries without a 'subject_id' string and a 'linked' true/false, e.g. "
                         f"{broken[:3]}")
    for key, value in target.items():
        if state.get(key) != value:
            raise ValueError(f"{path}: records uploads with {key} {state.get(key)!r}, not {value!r}")
    return state


def upload_manifest(manifest_dir: str | Path, project_id: int | str, subject_set_id: int | str, *,
                    endpoint: str = DEFAULT_ENDPOINT, dry_run: bool = True, link_batch_size: int = LINK_BATCH_SIZE,
                    credentials: Credentials | None = None) -> UploadReport:
    """Upload ``manifest_dir``'s subjects into subject set ``subject_set_id`` of project ``project_id``; see the
    module docstring. Raises :class:`UploadError` when Panoptes fails part way (rerun to resume)."""
    if link_batch_size < 1:
        raise ValueError(f"link_batch_size must be at least 1, got {link_batch_size}")
    endpoint = endpoint.rstrip("/")
    if Path(manifest_dir).name == MANIFEST_FILE and Path(manifest_dir).is_file():
        manifest_dir = Path(manifest_dir).parent  # the manifest file given instead of its folder
    rows = read_manifest(manifest_dir)
    path = state_path(manifest_dir, subject_set_id)
    state = load_state(path, endpoint, project_id, subject_set_id)
    subjects: dict[str, dict[str, Any]] = state["subjects"]
    report = UploadReport(
        manifest=Path(manifest_dir) / MANIFEST_FILE, state_file=path, dry_run=dry_run, total=len(rows),
        already_uploaded=sum(r.id_str in subjects for r in rows),
        to_upload=[r for r in rows if r.id_str not in subjects],
        to_link=sum(not s["linked"] for s in subjects.values()),
    )
    if dry_run:
        return report
    credentials = credentials or Credentials.from_env()
    _upload(report, state, endpoint, str(project_id), str(subject_set_id), link_batch_size, credentials)
    return report


def _upload(report: UploadReport, state: dict[str, Any], endpoint: str, project_id: str, subject_set_id: str,
            link_batch_size: int, credentials: Credentials) -> None:
    import requests
    from panoptes_client import Panoptes, Subject, SubjectSet
    from panoptes_client.panoptes import PanoptesAPIException

    subjects: dict[str, dict[str, Any]] = state["subjects"]

    def link(subject_set: Any, ids: list[str]) -> None:
        subject_set.add([subjects[i]["subject_id"] for i in ids])
        for i in ids:
            subjects[i]["linked"] = True
        write_json_atomic(state, report.state_file)
        report.linked += len(ids)

    try:
        with Panoptes(endpoint=endpoint, **credentials.client_kwargs()):
            subject_set = SubjectSet.find(subject_set_id)
            owner = (subject_set.raw.get("links") or {}).get("project")
            if str(owner) != project_id:
                raise ValueError(f"subject set {subject_set_id} at {endpoint} belongs to project {owner}, "
                                 f"not {project_id}")
            pending = [i for i, s in subjects.items() if not s["linked"]]
            for start in range(0, len(pending), link_batch_size):
                link(subject_set, pending[start : start + link_batch_size])
            pending = []
            for row in report.to_upload:
                subject = Subject()
                subject.links.project = project_id
                subject.add_location(str(row.image), manual_mimetype=row.mime_type)
                subject.metadata.update(row.metadata)
                subject.save()
                subjects[row.id_str] = {"subject_id": str(subject.id), "linked": False}
                write_json_atomic(state, report.state_file)
                report.created += 1
                pending.append(row.id_str)
                if len(pending) >= link_batch_size:
                    link(subject_set, pending)
                    pending = []
            if pending:
                link(subject_set, pending)
    except (PanoptesAPIException, requests.RequestException, KeyError, IndexError) as err:
        raise UploadError(f"upload to subject set {subject_set_id} at {endpoint} stopped ({report.created} subjects "
                          f"created, {report.linked} linked in this run): {_reason(err, endpoint)}; "
                          f"{_where_state(report.state_file)}") from err


def _reason(err: Exception, endpoint: str) -> str:
    """What failed, in words: panoptes-client's bare ``KeyError('x-csrf-token')`` means the endpoint is not Panoptes."""
    import requests

    if isinstance(err, KeyError | IndexError | requests.JSONDecodeError):
        missing = f" (its answer lacked {err})" if isinstance(err, KeyError) else ""
        return (f"{endpoint} did not answer as a Panoptes (Zooniverse API) server does{missing}; check --endpoint "
                f"(the Zooniverse API is at {DEFAULT_ENDPOINT})")
    return " ".join(str(err).split()) or type(err).__name__


def _where_state(state_file: Path) -> str:
    """Where the upload state is, or that there is none yet."""
    if state_file.is_file():
        return f"{state_file.resolve()} records what was done; rerun to resume"
    return (f"nothing was recorded (no state file was written; it would be {state_file.resolve()}); rerun to start "
            "again")
