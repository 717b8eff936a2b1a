"""Kubernetes: the RayJob rendered for one logical date (batch/k8s.py).

Every rendered manifest is checked field by field against the RayJob v1 API as KubeRay v1.7.0
documents it (tests/data/kuberay_v1_7_rayjob_schema.yaml, vendored: no network here): no
unknown field, every required field, enums and minimums, and the cross-field rules the CRD
and the operator apply. No Kubernetes cluster is involved.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from batch.config import load_job
from batch.k8s import RENDERED, RenderError, RenderRequest, entrypoint_for_submitter, pinned_image, render
from conftest import REPO

SCHEMA = yaml.safe_load((REPO / "tests" / "data" / "kuberay_v1_7_rayjob_schema.yaml").read_text())["types"]
DIGEST = "sha256:" + "ab" * 32
IMAGE = f"111122223333.dkr.ecr.us-east-1.amazonaws.com/corpus-batch@{DIGEST}"
MODEL = "s3://ml-models/translation/tower-7b-ft-2026-10/"
JOB = Path("jobs/nightly_translation.yaml")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DATE_LIKE = re.compile(r"\d{4}-\d{2}-\d{2}")


# --- a small validator for the vendored schema ----------------------------------------------


def schema_errors(value, type_spec, path: str = "") -> list[str]:
    """Every way `value` departs from `type_spec` (a name in SCHEMA, a primitive, or a dict)."""
    spec = type_spec if isinstance(type_spec, dict) else {"type": type_spec}
    kind = spec["type"]
    errors = []
    if kind.startswith("list of "):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        if len(value) < spec.get("min_items", 0):
            errors.append(f"{path}: at least {spec['min_items']} item(s)")
        for i, item in enumerate(value):
            errors += schema_errors(item, kind.removeprefix("list of "), f"{path}[{i}]")
        return errors
    if kind in ("map", "map of quantity"):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        item = "quantity" if kind == "map of quantity" else "string"
        return [e for key, v in value.items() for e in schema_errors(v, item, f"{path}.{key}")]
    if kind in SCHEMA:
        return errors + object_errors(value, SCHEMA[kind], path)
    if not primitive_ok(value, kind):
        return [f"{path}: expected {kind}, got {value!r}"]
    if "enum" in spec and value not in spec["enum"]:
        errors.append(f"{path}: {value!r} not one of {spec['enum']}")
    if "minimum" in spec and value < spec["minimum"]:
        errors.append(f"{path}: {value} below the minimum {spec['minimum']}")
    return errors


def object_errors(value, definition: dict, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object"]
    fields = definition["fields"]
    errors = [f"{path}.{key}: unknown field" for key in value if key not in fields]
    errors += [f"{path}.{key}: required" for key in definition.get("required", []) if key not in value]
    if "one_of" in definition and sum(key in value for key in definition["one_of"]) != 1:
        errors.append(f"{path}: exactly one of {definition['one_of']}")
    for key, item in value.items():
        if key in fields:
            errors += schema_errors(item, fields[key], f"{path}.{key}" if path else key)
    return errors


def primitive_ok(value, kind: str) -> bool:
    return {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "quantity": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str),
        "object": lambda v: isinstance(v, (dict, list)),
    }[kind](value)


def rayjob_errors(manifest: dict) -> list[str]:
    """The schema, plus the rules the CRD's CEL validations and the operator apply."""
    errors = schema_errors(manifest, "RayJob")
    name = manifest.get("metadata", {}).get("name", "")
    if not DNS_1123_SUBDOMAIN.match(name) or len(name) > 47:
        errors.append(f"metadata.name: {name!r} is not a valid RayJob name")
    spec = manifest.get("spec", {})
    if spec.get("deletionStrategy", {}).get("deletionRules"):
        # rules mode is incompatible with these (DeletionStrategy's documented semantics)
        for key in ("shutdownAfterJobFinishes", "ttlSecondsAfterFinished"):
            if spec.get(key):
                errors.append(f"spec.{key}: not allowed with deletionStrategy.deletionRules")
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
        errors.append("spec.ttlSecondsAfterFinished: needs shutdownAfterJobFinishes")
    if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
        errors.append("spec: rayClusterSpec or clusterSelector")
    return errors


def test_the_validator_catches_unknown_and_missing_fields():
    manifest = render_for("2026-11-24")
    assert rayjob_errors(manifest) == []
    broken = yaml.safe_load(yaml.safe_dump(manifest))
    broken["spec"]["backoffLimits"] = 2
    del broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["name"]
    broken["spec"]["deletionStrategy"]["deletionRules"][0]["condition"]["jobDeploymentStatus"] = "Failed"
    broken["spec"]["submissionMode"] = "K8sJob"
    errors = rayjob_errors(broken)
    assert "spec.backoffLimits: unknown field" in errors
    assert "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].name: required" in errors
    assert any("deletionRules[0].condition: exactly one of" in e for e in errors)
    assert any(e.startswith("spec.submissionMode: 'K8sJob' not one of") for e in errors)


# --- rendering -------------------------------------------------------------------------------


def render_for(date: str, **extra) -> dict:
    request = RenderRequest(
        job_file=JOB, run_date=dt.date.fromisoformat(date), image=IMAGE,
        overrides=(f"tasks.translation.model={MODEL}",), ray_version="2.60.0", **extra,
    )  # fmt: skip
    return render(request)


def job_arguments(manifest: dict) -> list[str]:
    """The words the job receives: the entry point through both shells (see batch/k8s.py)."""
    words = shlex.split(manifest["spec"]["entrypoint"])  # the submitter's shell
    return shlex.split(shlex.join(words))  # Ray's CLI quotes them; the head's shell splits again


def strings(node, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def test_two_dates_give_two_rayjobs_whose_every_date_field_agrees():
    manifests = {date: render_for(date) for date in ("2026-11-23", "2026-11-24")}
    for date, manifest in manifests.items():
        assert rayjob_errors(manifest) == [], date
        name = f"nightly-translation-{date}"
        assert manifest["metadata"]["name"] == name
        spec = manifest["spec"]
        assert spec["jobId"] == name  # the Ray submission id, as jobs/submit.sh names it
        assert manifest["metadata"]["labels"]["corpus-batch/date"] == date
        assert spec["metadata"]["date"] == date
        args = job_arguments(manifest)
        assert args[:5] == ["python", "-m", "batch", "run", JOB.as_posix()]
        assert args[args.index("--date") + 1] == date
        # what the job reads and writes, as the job itself resolves them from its arguments
        job = load_job(REPO / args[4], [a for i, a in enumerate(args) if args[i - 1] == "--set"],
                       run_date=dt.date.fromisoformat(args[args.index("--date") + 1]))  # fmt: skip
        assert job.input.uris == [f"s3://corpus-raw/posts/{date}/"]
        assert job.output.uri == f"s3://corpus-annotated/translation/{date}/"
        # no other date anywhere in the manifest
        for path, text in strings(manifest):
            for found in DATE_LIKE.findall(text):
                assert found == date, (path, text)
        for pod in pods(manifest):
            assert pod["metadata"]["labels"]["corpus-batch/date"] == date
            assert pod["metadata"]["labels"]["corpus-batch/run"] == name
    first, second = manifests.values()
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert first["spec"]["entrypoint"] != second["spec"]["entrypoint"]


def pods(manifest: dict) -> list[dict]:
    cluster = manifest["spec"]["rayClusterSpec"]
    return [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]


def test_pods_are_reproducible_and_gpus_start_only_when_the_job_asks():
    import ray

    manifest = render(RenderRequest(job_file=JOB, run_date=dt.date(2026, 11, 24), image="registry/corpus-batch:v7",
                                    image_digest=DIGEST, overrides=(f"tasks.translation.model={MODEL}",)))  # fmt: skip
    assert rayjob_errors(manifest) == []
    cluster = manifest["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    for pod in pods(manifest):
        for container in pod["spec"]["containers"]:
            assert container["image"] == f"registry/corpus-batch:v7@{DIGEST}"
            for var in container.get("env", []):
                assert "value" not in var or not var["name"].startswith(("AWS_SECRET", "AWS_ACCESS_KEY", "AWS_SESSION"))
    assert cluster["headGroupSpec"]["template"]["spec"]["serviceAccountName"] == "corpus-batch-head"
    for group in cluster["workerGroupSpecs"]:
        pod = group["template"]
        assert group["replicas"] == 0 and group["minReplicas"] == 0  # GPUs only once the engines ask
        assert pod["spec"]["serviceAccountName"] == "corpus-batch-worker"
        assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
        assert pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
        (container,) = pod["spec"]["containers"]
        cache = {var["name"]: var["value"] for var in container["env"]}["BATCH_MODEL_CACHE"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache]
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
        assert volume["hostPath"]["path"] == cache  # one cache per node, across pods and attempts
        assert "ephemeral-storage" in container["resources"]["requests"]
    spec = manifest["spec"]
    assert spec["backoffLimit"] >= 1 and spec["preRunningDeadlineSeconds"] < spec["activeDeadlineSeconds"]
    rules = spec["deletionStrategy"]["deletionRules"]
    for condition in ({"jobStatus": "SUCCEEDED"}, {"jobStatus": "FAILED"}, {"jobDeploymentStatus": "Failed"}):
        policies = {r["policy"]: r["condition"]["ttlSeconds"] for r in rules if condition.items() <= r["condition"].items()}
        assert policies["DeleteCluster"] == 0 and policies["DeleteSelf"] > 0, condition


def test_the_template_alone_cannot_be_applied():
    template = yaml.safe_load((REPO / "jobs" / "kuberay-nightly-translation.yaml").read_text())
    assert template["metadata"]["name"] == RENDERED
    assert any("metadata.name" in e for e in rayjob_errors(template))
    assert not DNS_1123_SUBDOMAIN.match(template["metadata"]["name"])  # the API server refuses it
    assert RENDERED not in json.dumps(render_for("2026-11-24"))


def test_service_accounts_separate_the_autoscaler_from_the_workers():
    documents = list(yaml.safe_load_all((REPO / "jobs" / "kuberay-service-account.yaml").read_text()))
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    head = by_kind_name[("ServiceAccount", "corpus-batch-head")]
    worker = by_kind_name[("ServiceAccount", "corpus-batch-worker")]
    assert head["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] != worker["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert worker["automountServiceAccountToken"] is False  # workers never call the Kubernetes API
    role = by_kind_name[("Role", "corpus-batch-autoscaler")]
    binding = by_kind_name[("RoleBinding", "corpus-batch-autoscaler")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "corpus-batch-head"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"pods", "rayclusters"} <= {r for rule in role["rules"] for r in rule["resources"]}


# --- what is refused, in one line -------------------------------------------------------------


def render_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "batch", "k8s", "render", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], "--date YYYY-MM-DD is required"),
        (["--date", "2026-11-24", "--image", "registry/corpus-batch:latest"], "a tag can move"),
        (["--date", "2026-11-24", "--image", "registry/corpus-batch@sha256:123"], "64 hex digits"),
        (["--date", "2026-11-24"], "hub id is downloaded by every worker"),
        (["--date", "2026-11-24", "--set", "engine.replicas=0"], "engine.replicas"),
    ],
)
def test_a_render_that_cannot_be_done_fails_with_one_line(args, expected):
    base = ["--image", IMAGE] if "--image" not in args else []
    result = render_cli(JOB.as_posix(), *base, *args)
    assert result.returncode == 3, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert expected in result.stderr and lines[0].startswith("INVALID: "), result.stderr
    if "engine.replicas" not in expected:  # a job-file error lists its fields, one per line
        assert len(lines) == 1, result.stderr


def test_the_cli_prints_a_manifest_kubectl_can_read():
    result = render_cli(JOB.as_posix(), "--date", "2026-11-24", "--image", IMAGE, "--set", f"tasks.translation.model={MODEL}")
    assert result.returncode == 0, result.stderr
    (manifest, budget) = list(yaml.safe_load_all(result.stdout))
    assert rayjob_errors(manifest) == []
    # every pod of the run is kept from voluntary evictions (kubectl drain) while it runs
    assert (budget["apiVersion"], budget["kind"]) == ("policy/v1", "PodDisruptionBudget")
    assert set(budget) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(budget["spec"]) == {"maxUnavailable", "selector"} and budget["spec"]["maxUnavailable"] == 0
    assert budget["metadata"]["name"] == manifest["metadata"]["name"]
    assert budget["metadata"]["labels"]["corpus-batch/date"] == "2026-11-24"
    selector = budget["spec"]["selector"]["matchLabels"]
    for pod in pods(manifest):
        assert selector.items() <= pod["metadata"]["labels"].items()
    assert manifest["spec"]["runtimeEnvYAML"] == 'env_vars:\n  PYTHONUNBUFFERED: "1"\n'


def test_image_pinning():
    assert pinned_image(IMAGE, None, False) == IMAGE
    assert pinned_image("r/c:v1", DIGEST, False) == f"r/c:v1@{DIGEST}"
    assert pinned_image("r/c:v1", None, True) == "r/c:v1"
    with pytest.raises(RenderError, match="disagree"):
        pinned_image(IMAGE, "sha256:" + "cd" * 32, False)


# --- the entry point reaches the job literally through both shells -------------------------


def test_arguments_reach_the_job_literally_through_the_submitter_and_head_shells(tmp_path):
    """Replays what runs on Kubernetes with the real programs: KubeRay's submitter pastes
    spec.entrypoint into a /bin/sh command line after `ray job submit ... --`; Ray's CLI turns
    the words it gets into one string (its own code, below) that the head runs with /bin/sh.
    A `python` that prints its arguments stands in for the job. (tests/test_deploy.py does the
    same on a real Ray head.)"""
    from ray.dashboard.modules.job import cli as ray_job_cli

    marker = tmp_path / "pwned"
    value = f"x=$(touch {marker}) `touch {marker}`; touch {marker} 'single' \"double\" \\ back"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_python = bin_dir / "python"
    fake_python.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake_python.chmod(0o755)
    words = ["python", "-m", "batch", "run", "jobs/nightly_translation.yaml", "--date", "2026-11-24", "--set", value]
    entrypoint = entrypoint_for_submitter(words)
    # the submitter's shell: the words `ray job submit` receives after `--`
    submitter = subprocess.run(["/bin/sh", "-c", f"{sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' {entrypoint} ;"],
                               capture_output=True, text=True, check=True)  # fmt: skip
    received = json.loads(submitter.stdout)
    assert "shlex.join(entrypoint)" in Path(ray_job_cli.__file__).read_text()  # how Ray's CLI joins them
    joined = shlex.join(received)
    # the head: Ray's job supervisor runs the joined string with a shell
    head = subprocess.run(["/bin/sh", "-c", joined], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(head.stdout) == words[1:]
    assert not marker.exists()
    assert entrypoint_for_submitter(words[:7]) == " ".join(words[:7])  # plain words stay readable


# --- what a retry of a published date reports, and its attempt log -----------------------------


def test_a_retry_of_a_partial_publish_stays_partial_and_logs_next_to_the_output(tmp_path):
    """The path every retry of a published date takes (no Ray, no engine): the manifest's
    unreadable inputs keep the exit at 2 and the PARTIAL line; the attempt's log lands in
    <output>/_logs/<run id>.log. tests/test_deploy.py runs the same on a real head and S3."""
    from conftest import run_cli, write_job

    out = tmp_path / "out"
    out.mkdir()
    bad = {"uri": str(tmp_path / "in" / "broken.parquet"), "reason": "not a readable Parquet file"}
    (out / "_manifest.json").write_text(json.dumps({"run_id": "r1", "rows": 5, "unreadable_inputs": [bad]}))
    (out / "_SUCCESS").write_text("{}")
    job = write_job(tmp_path / "job.yaml", {
        "name": "retry-check", "input": {"uris": [str(tmp_path / "in")]}, "output": {"uri": str(out)},
        "tasks": {"translation": {"model": str(tmp_path / "model"), "target_languages": ["en"]}},
    })  # fmt: skip
    for _ in range(2):
        result = run_cli("run", str(job))
        assert result.returncode == 2, result.stdout + result.stderr
        assert f"unreadable input {bad['uri']}: {bad['reason']}" in result.stdout
        assert result.stdout.splitlines()[-1] == f"PARTIAL: already published with unreadable inputs: {out}"
    logs = sorted((out / "_logs").glob("*.log"))
    assert len(logs) == 2
    for log in logs:
        lines = log.read_text().splitlines()
        assert lines[-1].endswith(f"PARTIAL: already published with unreadable inputs: {out}")
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z log: ", lines[0]), lines[0]

    (out / "_manifest.json").write_text(json.dumps({"run_id": "r1", "rows": 5, "unreadable_inputs": []}))
    complete = run_cli("run", str(job))
    assert complete.returncode == 0 and complete.stdout.splitlines()[-1] == f"SUCCEEDED: already published: {out}"


def test_usage_and_config_errors_exit_3(tmp_path):
    from conftest import run_cli

    missing = run_cli("run")
    assert missing.returncode == 3 and "Missing argument" in missing.stderr
    not_found = run_cli("run", str(tmp_path / "nope.yaml"))
    assert not_found.returncode == 3 and not_found.stderr.strip().splitlines()[-1].startswith("INVALID: ")


# --- what the scheduler sees: RayJob status -> exit status -----------------------------------


def rayjob_with(deployment: str, job_status: str = "", reason: str = "", message: str = "") -> dict:
    status = {k: v for k, v in {"jobDeploymentStatus": deployment, "jobStatus": job_status,
                                 "reason": reason, "message": message}.items() if v}  # fmt: skip
    return {"metadata": {"name": "nightly-translation-2026-11-24"}, "status": status}


RAY_FAILED = "Job entrypoint command failed with exit code {}, last available logs (truncated to 20,000 chars):\n..."


@pytest.mark.parametrize(
    "rayjob, expected",
    [
        (rayjob_with("Running", "RUNNING"), 4),
        (rayjob_with("Retrying", "FAILED", message=RAY_FAILED.format(1)), 4),
        (rayjob_with("Initializing"), 4),
        (rayjob_with("Complete", "SUCCEEDED"), 0),
        (rayjob_with("Failed", "FAILED", "AppFailed", RAY_FAILED.format(1)), 1),
        (rayjob_with("Failed", "FAILED", "AppFailed", RAY_FAILED.format(2)), 2),
        (rayjob_with("Failed", "FAILED", "AppFailed", RAY_FAILED.format(3)), 3),
        (rayjob_with("Complete", "FAILED", message=RAY_FAILED.format(2)), 2),  # KubeRay before 1.2
        (rayjob_with("Complete", "STOPPED"), 1),
        (rayjob_with("Failed", "RUNNING", "DeadlineExceeded", "The RayJob has passed the activeDeadlineSeconds."), 1),
        (rayjob_with("Failed", "", "PreRunningDeadlineExceeded"), 1),
        (rayjob_with("Failed", "", "SubmissionFailed"), 1),
        (rayjob_with("ValidationFailed", "", "ValidationFailed", "invalid RayJob spec"), 3),
    ],
)
def test_the_status_a_scheduler_reads_maps_to_the_jobs_exit_meaning(rayjob, expected):
    result = subprocess.run([sys.executable, "-m", "batch", "k8s", "status"], input=json.dumps(rayjob), cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == expected, result.stdout + result.stderr
    assert len(result.stdout.splitlines()) == 1 and "nightly-translation-2026-11-24" in result.stdout


def test_sigterm_writes_the_attempt_log_before_the_run_unwinds(tmp_path):
    """`ray job stop` and a deleted pod send SIGTERM, then SIGKILL after a grace period: the
    log is written in the handler itself, before anything else gets a chance to hang."""
    import signal

    from batch.attempt_log import AttemptLog, Stopped, stop_on_sigterm
    from batch.config import StorageConfig

    printed = []
    log = AttemptLog(lambda message, err=False: printed.append(message), flush_seconds=3600)
    target = log.place(str(tmp_path / "out"), StorageConfig(), "20261124T000000Z-test")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm(log)
        log.echo("progress: 10/20 rows (50%)")
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in this thread before the sleep ends
    finally:
        signal.signal(signal.SIGTERM, previous)
    lines = Path(target).read_text().splitlines()
    assert lines[0].endswith("progress: 10/20 rows (50%)") and lines[-1].endswith("stopped: SIGTERM received")
    assert printed == ["progress: 10/20 rows (50%)"]
