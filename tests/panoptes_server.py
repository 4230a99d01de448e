"""A local stand-in for the few Panoptes endpoints that panoptes-client (1.7) uses to upload subjects; tests only.

Each route follows the request the installed client sends (``panoptes_client/panoptes.py``, ``subject.py``,
``subject_set.py``):

- ``GET /users/sign_in``: a CSRF token in the ``X-CSRF-Token`` header and a session cookie (``get_csrf_token``).
- ``POST /users/sign_in``: JSON ``{"authenticity_token", "user": {"login", "password", "remember_me"}}``; answers
  ``{"users": [{"id", "login"}]}``, or 401 ``{"error"}`` (``login``).
- ``POST /oauth/token``: a form, ``grant_type=password`` + ``client_id`` from a signed-in session, or
  ``grant_type=client_credentials`` + ``client_id`` + ``client_secret``; answers ``{"access_token", "expires_in",
  "refresh_token"}`` (``get_bearer_token``).
- ``GET /api/subject_sets/{id}`` (``SubjectSet.find``, and the reload in ``SubjectSet.add``).
- ``GET /api/set_member_subjects?subject_set_id=&subject_id=`` (``SubjectSetLinkCollection.__contains__``, asked for
  each subject before linking).
- ``POST /api/subjects``: JSON ``{"subjects": {"locations": ["image/png"], "metadata", "links": {"project"}}}``;
  answers 201 with the subject, its locations now ``[{"image/png": signed URL}]`` (``Subject.save``).
- ``PUT`` the signed URL (served here too, like Azure blob storage): the image bytes with the MIME type as
  ``Content-Type`` and ``x-ms-blob-type: BlockBlob`` (``Subject._upload_media``).
- ``POST /api/subject_sets/{id}/links/subjects``: JSON ``{"subjects": ["1", ...]}`` (``LinkCollection.add``).

API requests must carry the JSON-API ``Accept`` header and a bearer token the server issued; other requests get 4xx
and unknown routes 404, so a change in the client's requests fails the tests. Everything received is recorded. To
test resuming, :meth:`FakePanoptes.fail_subject_creation_from` makes creation attempt ``n`` and every later one answer
HTTP 500 (an outage) until :meth:`FakePanoptes.recover`.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

JSON_API = "application/vnd.api+json; version=1"
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpeg"}


@dataclass
class Recorded:
    """One request as received (body decoded as JSON or form where it is one, else raw bytes)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeSubject:
    id: str
    metadata: dict[str, Any]
    locations: list[str]
    project: str
    upload_urls: list[str]
    media: dict[str, bytes] = field(default_factory=dict)


class FakePanoptes:
    """The fake server: ``with FakePanoptes(...) as server:`` serves on ``server.endpoint`` in a thread."""

    def __init__(self, *, username: str = "gz-team", password: str = "s3cret-Pa55",
                 client_id: str = "app-id", client_secret: str = "app-s3cret",
                 projects: dict[str, list[str]] | None = None) -> None:
        self.username, self.password = username, password
        self.client_id, self.client_secret = client_id, client_secret
        self.subject_sets = {s: p for p, sets in (projects or {"1234": ["5678"]}).items() for s in sets}
        self.requests: list[Recorded] = []
        self.subjects: dict[str, FakeSubject] = {}
        self.members: dict[str, list[str]] = {s: [] for s in self.subject_sets}
        self.creation_attempts = 0
        self._fail_from: int | None = None
        self._sessions: dict[str, dict[str, Any]] = {}
        self._tokens: set[str] = set()
        self._uploads: dict[str, tuple[str, str]] = {}  # upload path -> (subject id, mime type)
        self._signing_key = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._next_id = 100
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> FakePanoptes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def fail_subject_creation_from(self, attempt: int) -> None:
        """Answer HTTP 500 to subject-creation attempt ``attempt`` (counted from 1 over the server's life) and later."""
        self._fail_from = attempt

    def recover(self) -> None:
        """End the outage."""
        self._fail_from = None

    def routes(self) -> list[tuple[str, str]]:
        """(method, path) of every request received, in order."""
        return [(r.method, r.path) for r in self.requests]

    # handlers: each returns (status, headers, body); body is JSON-encoded unless bytes
    def handle(self, method: str, url: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(url)
        path, query = parts.path, parse_qs(parts.query)
        body = _decode(headers.get("content-type", ""), raw)
        with self._lock:
            self.requests.append(Recorded(method, path, query, headers, body))
            if path == "/users/sign_in":
                return self._sign_in(method, headers, body)
            if path == "/oauth/token" and method == "POST":
                return self._token(headers, body)
            if path.startswith("/uploads/") and method == "PUT":
                return self._put_media(path, query, headers, raw)
            if path.startswith("/api/"):
                return self._api(method, path.split("/")[2:], query, headers, body)
        return 404, {}, {"errors": [{"message": f"no route {method} {path}"}]}

    def _sign_in(self, method: str, headers: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        if method == "GET":
            session, csrf = secrets.token_hex(8), secrets.token_hex(16)
            self._sessions[session] = {"csrf": csrf, "user": None}
            return 200, {"X-CSRF-Token": csrf, "Set-Cookie": f"_panoptes_session={session}; path=/"}, {}
        session = self._sessions.get(_cookie(headers, "_panoptes_session") or "")
        if session is None or not isinstance(body, dict) or body.get("authenticity_token") != session["csrf"]:
            return 422, {}, {"error": "Can't verify CSRF token authenticity."}
        user = body.get("user") or {}
        if user.get("login") != self.username or user.get("password") != self.password:
            return 401, {}, {"error": "Invalid email or password."}
        session["user"] = "42"
        return 200, {}, {"users": [{"id": "42", "login": self.username}]}

    def _token(self, headers: dict[str, str], form: Any) -> tuple[int, dict[str, str], Any]:
        form = form if isinstance(form, dict) else {}
        grant = form.get("grant_type")
        if form.get("client_id") != self.client_id and grant == "client_credentials":
            return 401, {}, {"errors": ["invalid client"]}
        if grant == "password":
            session = self._sessions.get(_cookie(headers, "_panoptes_session") or "")
            if session is None or session["user"] is None:
                return 401, {}, {"errors": ["not signed in"]}
        elif grant == "client_credentials":
            if form.get("client_secret") != self.client_secret:
                return 401, {}, {"errors": ["invalid client secret"]}
        else:
            return 400, {}, {"errors": [f"unsupported grant {grant!r}"]}
        token = secrets.token_hex(16)
        self._tokens.add(token)
        return 200, {}, {"access_token": token, "token_type": "Bearer", "expires_in": 7200,
                         "refresh_token": secrets.token_hex(16), "scope": "public project"}

    def _api(self, method: str, parts: list[str], query: dict[str, list[str]], headers: dict[str, str],
             body: Any) -> tuple[int, dict[str, str], Any]:
        if headers.get("accept") != JSON_API:
            return 406, {}, {"errors": [{"message": "Accept must be " + JSON_API}]}
        if headers.get("authorization", "").removeprefix("Bearer ") not in self._tokens:
            return 401, {}, {"errors": [{"message": "You must be logged in to do that"}]}
        if method == "POST" and headers.get("content-type") != "application/json":
            return 415, {}, {"errors": [{"message": "Content-Type must be application/json"}]}
        if method == "GET" and len(parts) == 2 and parts[0] == "subject_sets":
            return self._subject_set(parts[1])
        if method == "GET" and parts == ["set_member_subjects"]:
            return self._set_member_subjects(query)
        if method == "POST" and parts == ["subjects"]:
            return self._create_subject(body)
        if method == "POST" and len(parts) == 4 and parts[0] == "subject_sets" and parts[2:] == ["links", "subjects"]:
            return self._link(parts[1], body)
        return 404, {}, {"errors": [{"message": f"no route {method} /api/{'/'.join(parts)}"}]}

    def _subject_set_json(self, set_id: str) -> dict[str, Any]:
        return {"id": set_id, "display_name": f"set {set_id}", "metadata": {},
                "set_member_subjects_count": len(self.members[set_id]),
                "links": {"project": self.subject_sets[set_id], "workflows": []}}

    def _subject_set(self, set_id: str) -> tuple[int, dict[str, str], Any]:
        if set_id not in self.subject_sets:
            return 404, {}, {"errors": [{"message": f"Could not find subject_set with id='{set_id}'"}]}
        return 200, {"ETag": f'W/"{secrets.token_hex(8)}"'}, {
            "subject_sets": [self._subject_set_json(set_id)],
            "meta": {"subject_sets": {"page": 1, "page_size": 20, "count": 1, "page_count": 1, "next_href": None}},
        }

    def _set_member_subjects(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], Any]:
        set_id = (query.get("subject_set_id") or [""])[0]
        subject_id = (query.get("subject_id") or [""])[0]
        found = [{"id": f"{set_id}-{subject_id}", "links": {"subject": subject_id, "subject_set": set_id}}
                 for member in self.members.get(set_id, []) if member == subject_id]
        return 200, {}, {"set_member_subjects": found,
                         "meta": {"set_member_subjects": {"page": 1, "count": len(found), "page_count": 1,
                                                          "next_href": None}}}

    def _create_subject(self, body: Any) -> tuple[int, dict[str, str], Any]:
        self.creation_attempts += 1
        if self._fail_from is not None and self.creation_attempts >= self._fail_from:
            return 500, {}, {"errors": [{"message": "Internal Server Error"}]}
        spec = body.get("subjects") if isinstance(body, dict) else None
        if not isinstance(spec, dict):
            return 422, {}, {"errors": [{"message": "body must be {'subjects': {...}}"}]}
        project = str((spec.get("links") or {}).get("project"))
        locations = spec.get("locations") or []
        if project not in self.subject_sets.values():
            return 422, {}, {"errors": [{"message": f"no project {project}"}]}
        if not locations or any(m not in _EXTENSIONS for m in locations):
            return 422, {}, {"errors": [{"message": f"unsupported locations {locations}"}]}
        subject_id = str(self._next_id)
        self._next_id += 1
        urls = []
        for mime in locations:
            upload_path = f"/uploads/subject_location/{secrets.token_hex(8)}.{_EXTENSIONS[mime]}"
            self._uploads[upload_path] = (subject_id, mime)
            urls.append(f"{self.endpoint}{upload_path}?sig={self._sign(upload_path)}")
        self.subjects[subject_id] = FakeSubject(subject_id, spec.get("metadata") or {}, list(locations), project, urls)
        subject = {"id": subject_id, "metadata": spec.get("metadata") or {},
                   "locations": [{m: u} for m, u in zip(locations, urls, strict=True)],
                   "links": {"project": project, "collections": [], "subject_sets": []}}
        return 201, {"ETag": f'W/"{secrets.token_hex(8)}"'}, {"subjects": [subject]}

    def _sign(self, upload_path: str) -> str:
        return hmac.new(self._signing_key, upload_path.encode(), "sha256").hexdigest()

    def _put_media(self, path: str, query: dict[str, list[str]], headers: dict[str, str],
                   raw: bytes) -> tuple[int, dict[str, str], Any]:
        if path not in self._uploads or not hmac.compare_digest((query.get("sig") or [""])[0], self._sign(path)):
            return 403, {}, b"signature mismatch"
        subject_id, mime = self._uploads[path]
        if headers.get("content-type") != mime or headers.get("x-ms-blob-type") != "BlockBlob":
            return 400, {}, b"wrong content type or blob type"
        self.subjects[subject_id].media[path] = raw
        return 201, {}, b""

    def _link(self, set_id: str, body: Any) -> tuple[int, dict[str, str], Any]:
        if set_id not in self.subject_sets:
            return 404, {}, {"errors": [{"message": f"Could not find subject_set with id='{set_id}'"}]}
        ids = body.get("subjects") if isinstance(body, dict) else None
        if not isinstance(ids, list) or any(str(i) not in self.subjects for i in ids):
            return 422, {}, {"errors": [{"message": f"unknown subjects in {ids}"}]}
        for subject_id in map(str, ids):
            if subject_id not in self.members[set_id]:
                self.members[set_id].append(subject_id)
        return 200, {}, {"subject_sets": [self._subject_set_json(set_id)]}


def _decode(content_type: str, raw: bytes) -> Any:
    if content_type.startswith("application/json"):
        return json.loads(raw) if raw else None
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[0] for k, v in parse_qs(raw.decode()).items()}
    return raw


def _cookie(headers: dict[str, str], name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _handler(fake: FakePanoptes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, body = fake.handle(self.command, self.path, headers, raw)
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes)
                             else "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
            """Stay quiet: the tests read what was received from :attr:`FakePanoptes.requests`."""

    return Handler
