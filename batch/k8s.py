"""The RayJob for one logical date, rendered from jobs/kuberay-nightly-translation.yaml.

A scheduler renders and creates one RayJob per logical date, never edits one:

    python -m batch k8s render jobs/nightly_translation.yaml --date 2026-11-24 \\
        --image REGISTRY/corpus-batch@sha256:... | kubectl create -f -

From the date come the name and the Ray job id (`<job name>-<date>`: `kubectl create` refuses
a second one, and every retry keeps the date), the entry point's `--date` (and through it the
input prefix and the output, which hold `{date}`), labels and the Ray job's metadata. The job
is loaded and validated here, so a mistake in it or in the arguments fails before anything
is created. The template's `<rendered>` values are the ones filled here; the template alone
cannot be applied (`<rendered>` is not a valid name).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import yaml

from batch.config import ConfigError, JobConfig, load_job, read_yaml_mapping
from batch.infer.models import is_hub_id
from batch.tasks import build_task

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = REPO / "jobs" / "kuberay-nightly-translation.yaml"
RENDERED = "<rendered>"
# KubeRay names the RayCluster, its pods and services after the RayJob and refuses names
# longer than this (its validation: the derived names must stay within 63 characters).
MAX_RAYJOB_NAME = 47
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class RenderError(ConfigError):
    """The RayJob cannot be rendered as asked; the message says what to change."""


@dataclass(frozen=True)
class RenderRequest:
    job_file: Path
    run_date: dt.date | None
    image: str
    image_digest: str | None = None
    allow_tag: bool = False
    overrides: tuple[str, ...] = ()
    input_uris: tuple[str, ...] = ()
    output_uri: str | None = None
    ray_version: str | None = None
    allow_hub_models: bool = False
    template: Path = DEFAULT_TEMPLATE


def render(request: RenderRequest) -> dict[str, Any]:
    """The RayJob manifest for one logical date, as a dict."""
    if request.run_date is None:
        raise RenderError("--date YYYY-MM-DD is required: a RayJob runs one logical date (the scheduler's, e.g. {{ ds }})")
    image = pinned_image(request.image, request.image_digest, request.allow_tag)
    job_rel = _job_in_repository(request.job_file)
    args = _job_arguments(request)
    job = load_job(REPO / job_rel, args.overrides, run_date=request.run_date)
    if not request.allow_hub_models:
        _refuse_hub_models(job)
    name = rayjob_name(job.name, request.run_date)
    manifest = _load_template(request.template)
    _fill(manifest, name=name, job=job, date=request.run_date, image=image,
          entrypoint=entrypoint_for_submitter(["python", "-m", "batch", "run", job_rel, *args.words(request.run_date)]),
          ray_version=request.ray_version or package_metadata.version("ray"),
          job_sha256=hashlib.sha256((REPO / job_rel).read_bytes()).hexdigest(), job_rel=job_rel)  # fmt: skip
    leftover = _placeholders(manifest)
    if leftover:
        raise RenderError(f"{request.template}: {leftover[0]} is still {RENDERED}: the template has a field this renderer does not fill")
    return manifest


def disruption_budget(rayjob: dict[str, Any]) -> dict[str, Any]:
    """A PodDisruptionBudget that keeps every pod of this run (head and GPU workers carry
    `corpus-batch/run: <name>`) from voluntary evictions: `kubectl drain`, node upgrades.
    The pods' do-not-evict annotations cover the cluster autoscaler and Karpenter; a drain
    honours only a budget. Ray's own scale-down deletes pods, which a budget does not stop.
    Nothing can own it (the RayJob's uid is not known before it is created), so the
    scheduler deletes it by label once the RayJob has ended; one left behind selects no pods
    once the cluster is gone, and blocks nothing."""
    name = rayjob["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "labels": dict(rayjob["metadata"]["labels"])},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"corpus-batch/run": name}}},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (runtimeEnvYAML) as literal blocks, as a person would write them."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def to_yaml(*manifests: dict[str, Any]) -> str:
    """One YAML document per manifest, as `kubectl create -f -` takes them."""
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, width=1000)


# --- names, image, entry point -------------------------------------------------------------


def rayjob_name(job_name: str, run_date: dt.date) -> str:
    name = f"{job_name.lower().replace('_', '-').replace('.', '-')}-{run_date.isoformat()}"
    if not _DNS_LABEL.match(name) or len(name) > MAX_RAYJOB_NAME:
        raise RenderError(
            f"RayJob name {name!r} (job name + date) must be lowercase letters, digits and '-', "
            f"at most {MAX_RAYJOB_NAME} characters: shorten the job's name"
        )
    return name


def pinned_image(image: str, digest: str | None, allow_tag: bool) -> str:
    """`repo@sha256:...`, or `repo:tag` with `--image-digest sha256:...` (the digest the tag
    resolved to when it was pushed). Every pod of every attempt then runs the same bytes."""
    if not image or RENDERED in image:
        raise RenderError("--image: the image to run, e.g. REGISTRY/corpus-batch@sha256:<digest>")
    repository, at, pinned = image.partition("@")
    if at:
        if not _DIGEST.match(pinned):
            raise RenderError(f"--image {image}: the digest after @ must be sha256: and 64 hex digits")
        if digest and digest != pinned:
            raise RenderError(f"--image {image} and --image-digest {digest} disagree")
        return image
    if digest:
        if not _DIGEST.match(digest):
            raise RenderError(f"--image-digest {digest}: expected sha256: and 64 hex digits (docker buildx imagetools inspect IMAGE)")
        return f"{image}@{digest}"
    if allow_tag:
        return image
    raise RenderError(
        f"--image {image}: a tag can move between two pods of one run; give the digest "
        f"(--image-digest sha256:..., or IMAGE@sha256:...), or --allow-tag to accept that"
    )


def entrypoint_for_submitter(words: list[str]) -> str:
    """`spec.entrypoint` such that the job receives exactly `words`.

    KubeRay's submitter pastes it into a shell command line (`ray job submit ... --
    ENTRYPOINT`, ray-operator/controllers/ray/common/job.go); the shell splits it into words,
    Ray's CLI quotes them again into one string (`shlex.join`, Ray 2.60
    ray/dashboard/modules/job/cli.py) and Ray runs that with /bin/sh on the head. So each word
    is quoted once, for a POSIX shell; plain words stay as they are, readable.
    """
    return shlex.join(words)


@dataclass(frozen=True)
class _Arguments:
    overrides: list[str]
    input_uris: tuple[str, ...]
    output_uri: str | None
    sets: tuple[str, ...]

    def words(self, run_date: dt.date) -> list[str]:
        words = ["--date", run_date.isoformat()]
        for uri in self.input_uris:
            words += ["--input", uri]
        if self.output_uri:
            words += ["--output", self.output_uri]
        for override in self.sets:
            words += ["--set", override]
        return words


def _job_arguments(request: RenderRequest) -> _Arguments:
    """The job's own arguments, with `{date}` in --input/--output filled here so the
    entry point names the day's prefix explicitly."""
    date = request.run_date.isoformat()
    inputs = tuple(uri.replace("{date}", date) for uri in request.input_uris)
    output = request.output_uri.replace("{date}", date) if request.output_uri else None
    overrides = list(request.overrides)
    if inputs:
        overrides.append("input.uris=" + json.dumps(list(inputs)))
    if output:
        overrides.append("output.uri=" + json.dumps(output))
    return _Arguments(overrides, inputs, output, tuple(request.overrides))


def _job_in_repository(job_file: Path) -> str:
    """The job's path inside the repository: the image holds the repository at /app."""
    path = job_file if job_file.is_absolute() else (Path.cwd() / job_file)
    if not path.exists() and not job_file.is_absolute():
        path = REPO / job_file
    try:
        relative = path.resolve().relative_to(REPO)
    except ValueError:
        raise RenderError(f"{job_file}: the job file must be inside {REPO} (the image holds the repository)") from None
    if not path.is_file():
        raise RenderError(f"{job_file}: job file not found")
    return relative.as_posix()


def _refuse_hub_models(job: JobConfig) -> None:
    for name, config in job.enabled_tasks().items():
        task = build_task(name, config)
        for field, uri in [("model", config.model), *((f"adapter {a}", u) for a, u in task.adapters().items())]:
            if is_hub_id(uri):
                raise RenderError(
                    f"tasks.{name} {field} {uri}: a hub id is downloaded by every worker on every attempt; "
                    f"copy it to s3:// and --set tasks.{name}.model=s3://..., or pass --allow-hub-models"
                )


# --- the template ---------------------------------------------------------------------------


def _load_template(path: Path) -> dict[str, Any]:
    manifest = read_yaml_mapping(path, "template", "a RayJob manifest", RenderError)
    if manifest.get("kind") != "RayJob":
        raise RenderError(f"{path}: not a RayJob template")
    return manifest


def _fill(manifest: dict, *, name: str, job: JobConfig, date: dt.date, image: str, entrypoint: str,
          ray_version: str, job_sha256: str, job_rel: str) -> None:  # fmt: skip
    labels = {"corpus-batch/job": _label(job.name), "corpus-batch/date": date.isoformat()}
    manifest["metadata"]["name"] = name
    manifest["metadata"]["labels"].update(labels)
    spec = manifest["spec"]
    spec["jobId"] = name  # the Ray submission id: the same on every retry, as jobs/submit.sh names it
    spec["entrypoint"] = entrypoint
    spec["metadata"] = {"job": job.name, "date": date.isoformat(), "job_file": job_rel, "job_sha256": job_sha256}
    cluster = spec["rayClusterSpec"]
    cluster["rayVersion"] = ray_version
    for pod in [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]:
        pod.setdefault("metadata", {}).setdefault("labels", {}).update({**labels, "corpus-batch/run": name})
        for container in pod["spec"]["containers"]:
            container["image"] = image


def _label(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:63]


def _placeholders(node: Any, path: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _placeholders(value, f"{path}.{key}" if path else key)]
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in _placeholders(value, f"{path}[{i}]")]
    return [path] if isinstance(node, str) and RENDERED in node else []


# --- what a scheduler sees -------------------------------------------------------------------

RUNNING = 4  # `k8s status`: the RayJob has not ended yet (not an outcome: poll again)
_EXIT_CODE = re.compile(r"exit code (\d+)")
# KubeRay's reasons for a failed RayJob (status.reason) that are not the job's own exit.
_RETRY_MAY_HELP = {"DeadlineExceeded", "PreRunningDeadlineExceeded", "SubmissionFailed",
                   "JobDeploymentStatusTransitionGracePeriodExceeded"}  # fmt: skip


def rayjob_outcome(rayjob: dict[str, Any]) -> tuple[int, str]:
    """The exit status a scheduler acts on (batch/outcome.py; RUNNING while it goes on), and
    why, from a RayJob's status as `kubectl get rayjob NAME -o json` shows it.

    A Ray job that exits non-zero is FAILED to Ray and KubeRay alike; the job's own exit code
    survives only in the message Ray writes ("Job entrypoint command failed with exit code 2,
    ...") and KubeRay copies into status.message, so that is where 2 and 3 are read from.
    """
    from batch.outcome import Exit

    status = rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus", "")
    job_status = status.get("jobStatus", "")
    reason = status.get("reason", "")
    why = f"jobDeploymentStatus={deployment or '-'} jobStatus={job_status or '-'}" + (f" reason={reason}" if reason else "")
    if deployment == "ValidationFailed" or reason == "ValidationFailed":
        return Exit.INVALID, f"{why}: KubeRay refused the manifest: {status.get('message', '')}"
    if deployment not in ("Complete", "Failed"):
        return RUNNING, why
    if job_status == "SUCCEEDED":
        return Exit.SUCCEEDED, why
    if reason in _RETRY_MAY_HELP:
        return Exit.FAILED, f"{why}: {status.get('message', '')}".rstrip(": ")
    match = _EXIT_CODE.search(status.get("message", ""))
    code = int(match.group(1)) if match else None
    if code in (Exit.PARTIAL, Exit.INVALID):
        return Exit(code), f"{why}: the job exited {code} ({Exit(code).name})"
    return Exit.FAILED, f"{why}: the job exited {code if code is not None else 'without an exit code'}"
