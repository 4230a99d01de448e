"""deploy/: ``prefect.yaml`` (entrypoints, parameters, schedules, job variables, the image each container runs, and
``prefect deploy --all`` against a real local Prefect server), the KubeRay manifests (against the ray.io/v1 CRD
fields) and the Slurm batch script (``bash -n``, ``#SBATCH`` directives, and a run with stand-ins for srun, scontrol
and apptainer). ``test_deployments_fire.py`` runs the deployments with a real worker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.flows import load_flow_from_entrypoint
from prefect.server.schemas.schedules import CronSchedule

from flows.__main__ import FLOWS

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
SCORING_IMAGE = "ghcr.io/zoobot-pipeline/zoobot-pipeline-scoring:latest"  # no torch: see deploy/README.md
TRAINING_IMAGE = "ghcr.io/zoobot-pipeline/zoobot-pipeline-training:latest"
SCORING_FLOWS = {"watch_releases", "score_release", "rank_and_queue"}  # the rest train or export: torch
POOL_TYPES = {"zoobot-process": "process", "zoobot-docker": "docker", "zoobot-kubernetes": "kubernetes"}
K8S_TEMPLATE = DEPLOY / "kubernetes" / "prefect-job-template.json"
PERIODS = {"watch_releases": timedelta(hours=1), "active_learning_cycle": timedelta(days=7)}


def _image_user() -> tuple[int, int]:
    """The UID and GID the image runs as (its Dockerfile's last ``USER uid:gid``): pods must run as the same user,
    whose home directory holds Ray's and Prefect's state."""
    user = re.findall(r"^USER (\d+):(\d+)$", (REPO / "containers" / "Dockerfile").read_text(), re.M)[-1]
    return int(user[0]), int(user[1])


def _deployments() -> list[dict[str, Any]]:
    return yaml.safe_load((DEPLOY / "prefect.yaml").read_text())["deployments"]


def _flow(entrypoint: str) -> Any:
    return load_flow_from_entrypoint(str(REPO / entrypoint))


def _image_of(deployment: dict[str, Any]) -> str:
    """The image a containerised deployment must run: the scoring image for scoring flows, else the training one."""
    return SCORING_IMAGE if deployment["entrypoint"].split(":")[1] in SCORING_FLOWS else TRAINING_IMAGE


def test_prefect_yaml_is_valid_and_every_entrypoint_imports_with_parameters_that_fit(monkeypatch):
    monkeypatch.chdir(REPO)  # entrypoints are relative to the repository root, where `prefect deploy` runs
    PrefectYamlModel.model_validate(yaml.safe_load((DEPLOY / "prefect.yaml").read_text()))
    deployments = _deployments()
    assert len({d["name"] for d in deployments}) == len(deployments)
    assert {d["entrypoint"].split(":")[1] for d in deployments} == set(FLOWS)
    for deployment in deployments:
        flow = _flow(deployment["entrypoint"])
        assert flow.name == deployment["entrypoint"].split(":")[1].replace("_", "-")
        parameters = deployment.get("parameters", {})
        unknown = set(parameters) - set(flow.parameters.properties)
        assert not unknown, f"{deployment['name']}: unknown parameters {unknown}"
        if deployment.get("schedules"):  # a scheduled run gets no other parameters: all required ones are here
            flow.validate_parameters(parameters)
        assert deployment["work_pool"]["name"] in POOL_TYPES
        assert deployment["name"].split("-")[0] == {"process": "local", "docker": "docker", "kubernetes": "k8s"}[
            POOL_TYPES[deployment["work_pool"]["name"]]]


def test_schedules_parse_and_fire_hourly_for_the_watcher_and_weekly_for_active_learning():
    scheduled = [d for d in _deployments() if d.get("schedules")]
    assert {d["entrypoint"].split(":")[1] for d in scheduled} == set(PERIODS)
    for deployment in scheduled:
        (spec,) = deployment["schedules"]
        schedule = CronSchedule(cron=spec["cron"], timezone=spec["timezone"])
        times = asyncio.run(schedule.get_dates(n=3, start=datetime(2026, 1, 1, tzinfo=UTC)))
        period = PERIODS[deployment["entrypoint"].split(":")[1]]
        assert [b - a for a, b in zip(times, times[1:], strict=False)] == [period, period]
        assert deployment.get("concurrency_limit") == 1


def test_containers_run_the_scoring_image_for_scoring_flows_and_the_training_image_for_the_others():
    containerised = [d for d in _deployments() if POOL_TYPES[d["work_pool"]["name"]] != "process"]
    docker = {d["entrypoint"].split(":")[1] for d in containerised if d["work_pool"]["name"] == "zoobot-docker"}
    assert docker == set(FLOWS)  # every flow can run on the docker pool, each in its image
    for deployment in containerised:
        assert deployment["work_pool"]["job_variables"]["image"] == _image_of(deployment), deployment["name"]
    template = json.loads(K8S_TEMPLATE.read_text())
    assert template["variables"]["properties"]["image"]["default"] == SCORING_IMAGE
    # the scoring image has no torch, timm or TensorFlow: the scoring flows load without them
    entrypoints = sorted({str(REPO / d["entrypoint"]) for d in containerised if _image_of(d) == SCORING_IMAGE})
    assert len(entrypoints) == len(SCORING_FLOWS)
    code = ("import sys\nfrom prefect.flows import load_flow_from_entrypoint\n"
            "flows = [load_flow_from_entrypoint(e).name for e in sys.argv[1:]]\n"
            "print(sorted(flows), sorted(m for m in ('torch', 'timm', 'tensorflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *entrypoints], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PREFECT_LOGGING_LEVEL": "ERROR"})
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(f.replace("_", "-") for f in SCORING_FLOWS)
    assert done.stdout.strip().splitlines()[-1] == f"{names} []"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def prefect_server_process(home: Path, services: bool = False, **settings: str) -> Iterator[dict[str, str]]:
    """``prefect server start`` on a free port with PREFECT_HOME ``home`` (SQLite there), its background services
    (scheduler, ...) only if ``services``, and extra ``settings`` (environment variables); yields the environment to
    reach it (PREFECT_API_URL, no other PREFECT_* variable of this process)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", RAY_AUTH_MODE="disabled",
               PYTHONPATH=str(REPO), **settings)
    log = open(home / "server.log", "w")  # noqa: SIM115 (closed after the server stops)
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port), *([] if services else ["--no-services"])], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield {**env, "PREFECT_API_URL": url}
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A local Prefect server without services for the module; yields the environment to reach it."""
    with prefect_server_process(tmp_path_factory.mktemp("prefect-server-home")) as env:
        yield env


def _prefect(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _api(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_prefect_deploy_all_creates_every_deployment_on_a_local_server(prefect_server):
    env = prefect_server
    for name, pool_type in POOL_TYPES.items():
        template = ["--base-job-template", str(K8S_TEMPLATE)] if pool_type == "kubernetes" else []
        _prefect(env, "work-pool", "create", name, "--type", pool_type, *template)
    _prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")

    pools = {p["name"]: p for p in _api(env, "POST", "/work_pools/filter", {})}
    created = {d["name"]: d for d in _api(env, "POST", "/deployments/filter", {})}
    assert sorted(created) == sorted(d["name"] for d in _deployments())
    for spec in _deployments():
        deployment = created[spec["name"]]
        assert deployment["work_pool_name"] == spec["work_pool"]["name"]
        variables = pools[spec["work_pool"]["name"]]["base_job_template"]["variables"]
        job_variables = spec["work_pool"].get("job_variables", {})
        assert set(job_variables) <= set(variables["properties"]), spec["name"]  # Prefect accepts unknown ones
        jsonschema.validate(job_variables, variables)
        assert deployment["job_variables"] == job_variables
        assert [s["schedule"].get("cron") for s in deployment["schedules"]] == [
            s["cron"] for s in spec.get("schedules", [])]
        assert deployment["parameters"] == json.loads(json.dumps(spec.get("parameters", {})))
        if POOL_TYPES[spec["work_pool"]["name"]] != "process":  # images keep the project in /opt/zoobot-pipeline
            assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {
                "directory": "/opt/zoobot-pipeline"}}]
            assert deployment["job_variables"]["image"] == _image_of(spec), spec["name"]
    job = pools["zoobot-kubernetes"]["base_job_template"]["job_configuration"]["job_manifest"]["spec"]["template"]
    assert job["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "{{ data_claim }}"
    _check_security_context(job["spec"]["securityContext"], "prefect job template")


def test_python_m_flows_runs_a_flow_that_reports_to_the_server(prefect_server, tmp_path):
    (tmp_path / "releases").mkdir()
    params = {"releases_root": str(tmp_path / "releases"), "package_dir": str(tmp_path / "package"),
              "outputs_root": str(tmp_path / "outputs")}
    done = subprocess.run([sys.executable, "-m", "flows", "watch_releases", "--params", json.dumps(params)],
                          env=prefect_server, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _api(prefect_server, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["watch-releases"]}}})
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    assert [r["parameters"]["releases_root"] for r in runs] == [params["releases_root"]]
    keys = [a["key"] for a in _api(prefect_server, "POST", "/artifacts/filter",
                                   {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]}}})]
    assert "watch-releases" in keys


# --- KubeRay ---------------------------------------------------------------------------------------------------------
# Field names of the ray.io/v1 CRDs (KubeRay 1.x, ray-operator/config/crd/bases) that these manifests may use.
RAYCLUSTER_SPEC = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
                   "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions"}
AUTOSCALER_OPTIONS = {"upscalingMode", "idleTimeoutSeconds", "resources", "securityContext", "env", "envFrom",
                      "image", "imagePullPolicy", "volumeMounts", "version"}
HEAD_GROUP = {"serviceType", "rayStartParams", "template", "enableIngress", "headService"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template", "numOfHosts",
                "scaleStrategy", "suspend", "idleTimeoutSeconds"}
RAYJOB_SPEC = {"entrypoint", "rayClusterSpec", "submissionMode", "shutdownAfterJobFinishes",
               "ttlSecondsAfterFinished", "activeDeadlineSeconds", "runtimeEnvYAML", "submitterPodTemplate",
               "clusterSelector", "suspend", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId",
               "metadata"}
POD_SPEC = {"containers", "volumes", "securityContext", "serviceAccountName", "tolerations", "nodeSelector",
            "affinity", "initContainers", "restartPolicy", "terminationGracePeriodSeconds"}
CONTAINER = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports", "resources", "securityContext",
             "volumeMounts", "lifecycle", "workingDir"}
# Kubernetes resource quantity, as in the CRD's pattern
QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+"
                      r"(\.[0-9]*)?)|(\.[0-9]+))))?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_security_context(context: dict[str, Any], where: str) -> None:
    uid, gid = _image_user()
    assert context["runAsNonRoot"] is True, where
    assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), f"{where}: not the image's user {uid}:{gid}"
    assert context.get("fsGroup", gid) == gid, where


def _check_pod_template(template: dict[str, Any], image: str, where: str) -> None:
    """A pod template that runs ``image``'s repository (any tag: ``latest-gpu`` too) as the image's user."""
    spec = template["spec"]
    assert set(spec) <= POD_SPEC, f"{where}: {set(spec) - POD_SPEC}"
    _check_security_context(spec["securityContext"], where)
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for container in spec["containers"]:
        assert set(container) <= CONTAINER, f"{where}: {set(container) - CONTAINER}"
        assert DNS_LABEL.match(container["name"]), where
        assert container["image"].rsplit(":", 1)[0] == image.rsplit(":", 1)[0], where
        for kind in ("requests", "limits"):
            assert all(QUANTITY.match(str(q)) for q in container["resources"][kind].values()), where
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
        mounts = container.get("volumeMounts", [])
        assert {m["name"] for m in mounts} <= volumes, where
        assert not mounts or {"name": "data", "mountPath": "/data/zoobot"} in mounts, where


def _check_cluster_spec(spec: dict[str, Any], image: str, where: str) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, f"{where}: {set(spec) - RAYCLUSTER_SPEC}"
    pinned = re.search(r"^ray==(\S+)$", (REPO / "requirements" / "constraints.txt").read_text(), re.M).group(1)
    assert spec["rayVersion"] == pinned, where
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_OPTIONS, where
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP, where
    groups = [("head", head), *((g["groupName"], g) for g in spec["workerGroupSpecs"])]
    for name, group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), f"{where}/{name}: strings only"
        _check_pod_template(group["template"], image, f"{where}/{name}")
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, f"{where}: {set(group) - WORKER_GROUP}"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265, 10001} <= ports, where


def test_kuberay_raycluster_and_rayjob_use_crd_fields_the_project_images_and_the_shared_volume(monkeypatch):
    cluster = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(cluster["spec"], TRAINING_IMAGE, "raycluster")  # it runs the learning cycle's Ray Train too
    k8s = [d for d in _deployments() if d["work_pool"]["name"] == "zoobot-kubernetes"]
    service = f"{cluster['metadata']['name']}-head-svc.{cluster['metadata']['namespace']}.svc.cluster.local:10001"
    assert {d["parameters"]["ray_address"] for d in k8s} == {f"ray://{service}"}

    job = yaml.safe_load((DEPLOY / "kuberay" / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert set(job["spec"]) <= RAYJOB_SPEC, set(job["spec"]) - RAYJOB_SPEC
    assert job["spec"]["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    _check_cluster_spec(job["spec"]["rayClusterSpec"], SCORING_IMAGE, "rayjob")  # it runs the watcher only
    _check_pod_template(job["spec"]["submitterPodTemplate"], SCORING_IMAGE, "rayjob/submitter")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "flows", "watch_releases"] and argv[4] == "--params"
    parameters = json.loads(argv[5])
    assert parameters["use_ray"] is True and "ray_address" not in parameters  # joins the job's own cluster
    monkeypatch.chdir(REPO)
    FLOWS[argv[3]].validate_parameters(parameters)


# --- Slurm -----------------------------------------------------------------------------------------------------------
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks-per-node", "cpus-per-task", "mem", "time", "output", "error",
                  "signal", "partition", "account", "gpus-per-node", "exclusive", "qos", "constraint"}
SLURM_SCRIPT = DEPLOY / "slurm" / "zoobot-ray.sbatch"


def test_slurm_script_parses_and_its_sbatch_directives_are_well_formed():
    subprocess.run(["bash", "-n", str(SLURM_SCRIPT)], check=True)
    lines = SLURM_SCRIPT.read_text().splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line.strip() and not line.startswith("#"))
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert all(lines.index(d) < first_command for d in directives)  # sbatch stops reading at the first command
    options = {}
    for directive in directives:
        match = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", directive)
        assert match and match.group(1) in SBATCH_OPTIONS, directive
        options[match.group(1)] = match.group(2)
    assert re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", options["time"])
    assert re.fullmatch(r"\d+[KMGT]?", options["mem"]) and int(options["nodes"]) >= 1
    assert options["ntasks-per-node"] == "1"  # one Ray node per Slurm node
    assert re.fullmatch(r"B?:?[A-Z0-9]+@\d+", options["signal"])


STUBS = {
    "scontrol": 'printf "n1\\nn2\\nn3\\n"',
    "hostname": "echo 10.1.2.3",
    "srun": 'node=; while [ "${1#-}" != "$1" ]; do if [ "$1" = -w ]; then node=$2; shift; fi; shift; done\n'
            'echo "srun[$node] $*" >> "$STUB_LOG"; STUB_NODE=$node exec "$@"',
    "apptainer": 'echo "apptainer[${STUB_NODE:-batch}] $*" >> "$STUB_LOG"\n'
                 'while [ $# -gt 0 ] && [ "${1%.sif}" = "$1" ]; do shift; done; shift\n'
                 'case "$*" in\n'
                 '  "ray start"*) exec sleep 60 ;;\n'
                 '  "python -c"*) grep -c "^apptainer.* ray start " "$STUB_LOG" ;;\n'  # nodes alive = Ray nodes started
                 'esac',
}


def test_slurm_script_starts_ray_on_every_node_in_the_image_and_runs_the_flow_against_it(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    params = DEPLOY / "slurm" / "watch-releases.yaml"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "STUB_LOG": str(log),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "n[1-3]", "SLURM_CPUS_PER_TASK": "8",
           "PREFECT_API_URL": "http://prefect:4200/api"}  # no ZOOBOT_IMAGE: the watcher's default, scoring
    start = time.monotonic()
    subprocess.run(["bash", str(SLURM_SCRIPT), "watch_releases", str(params)], env=env, check=True, timeout=60,
                   capture_output=True)
    assert time.monotonic() - start < 30  # the background Ray processes were stopped at the end
    calls = log.read_text().splitlines()
    container = ("apptainer[{}] exec --cleanenv --env RAY_AUTH_MODE=disabled,PYTHONPATH=/opt/zoobot-pipeline,"
                 f"PREFECT_API_URL=http://prefect:4200/api --bind /data/zoobot --bind {params.parent} "
                 f"--pwd /opt/zoobot-pipeline {tmp_path}/images/zoobot-pipeline-scoring.sif ")
    assert container.format("n1") + ("ray start --head --block --node-ip-address=10.1.2.3 --port=6379 "
                                      "--temp-dir=/tmp/ray-4242 --num-cpus=8 --num-gpus=0 "
                                      "--include-dashboard=false") in calls
    for node in ("n2", "n3"):
        assert container.format(node) + ("ray start --block --address=10.1.2.3:6379 --num-cpus=8 "
                                         "--num-gpus=0") in calls
    flow_call = container.format("batch") + (f"python -m flows watch_releases --params-file {params} "
                                             '--params {"ray_address": "10.1.2.3:6379"}')
    assert calls[-1] == flow_call
    parameters = {**yaml.safe_load(params.read_text()), "ray_address": "10.1.2.3:6379"}
    FLOWS["watch_releases"].validate_parameters(parameters)
    FLOWS["active_learning_cycle"].validate_parameters(
        {**yaml.safe_load((DEPLOY / "slurm" / "active-learning-cycle.yaml").read_text()), "ray_address": "x:1"})
