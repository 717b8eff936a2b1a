"""`python -m batch k8s render`: parsing and printing; the rendering is batch/k8s.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from batch.config import ConfigError
from batch.outcome import Exit


@click.group("k8s")
def k8s() -> None:
    """Kubernetes (KubeRay): the RayJob of a job for one logical date."""


@k8s.command("render")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--date", "run_date", type=click.DateTime(["%Y-%m-%d"]),
              help="The logical date (required): names the RayJob and its job id, fills {date} in input and output.")  # fmt: skip
@click.option("--image", required=True, metavar="IMAGE[@sha256:DIGEST]", help="The image every pod runs.")
@click.option("--image-digest", metavar="sha256:DIGEST", help="The digest --image's tag resolved to.")
@click.option("--allow-tag", is_flag=True, help="Accept an image tag without a digest (pods of one run may differ).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a job-file field (passed to the job).")
@click.option("--input", "input_uris", multiple=True, metavar="URI", help="Override input.uris; {date} is filled.")
@click.option("--output", "output_uri", metavar="URI", help="Override output.uri; {date} is filled.")
@click.option("--ray-version", help="rayVersion of the cluster (default: the Ray installed here, as in the image).")
@click.option("--allow-hub-models", is_flag=True, help="Accept hub ids as models (downloaded by every worker, every attempt).")
@click.option("--template", type=click.Path(dir_okay=False, path_type=Path), help="RayJob template (default: jobs/kuberay-nightly-translation.yaml).")  # fmt: skip
def render_command(job_file, run_date, image, image_digest, allow_tag, overrides, input_uris, output_uri,
                   ray_version, allow_hub_models, template):  # fmt: skip
    """Print the RayJob that runs JOB_FILE for --date, and the PodDisruptionBudget that
    keeps its pods from being drained, for `kubectl create -f -`."""
    from batch.k8s import DEFAULT_TEMPLATE, RenderRequest, disruption_budget, render, to_yaml

    request = RenderRequest(
        job_file=job_file, run_date=run_date.date() if run_date else None, image=image, image_digest=image_digest,
        allow_tag=allow_tag, overrides=tuple(overrides), input_uris=tuple(input_uris), output_uri=output_uri,
        ray_version=ray_version, allow_hub_models=allow_hub_models, template=template or DEFAULT_TEMPLATE,
    )  # fmt: skip
    try:
        manifest = render(request)
    except ConfigError as exc:
        click.echo(f"INVALID: {exc}", err=True)
        sys.exit(Exit.INVALID)
    click.echo(to_yaml(manifest, disruption_budget(manifest)), nl=False)


@k8s.command("status")
def status_command():
    """Read a RayJob (`kubectl get rayjob NAME -o json`) on stdin; print its outcome and exit
    with it: 0 succeeded, 1 failed (a retry may help), 2 partial, 3 invalid, 4 still running."""
    from batch.k8s import RUNNING, rayjob_outcome

    text = sys.stdin.read()
    try:
        rayjob = json.loads(text)
    except json.JSONDecodeError:
        click.echo("FAILED: no RayJob on stdin (kubectl get rayjob NAME -o json | python -m batch k8s status)", err=True)
        sys.exit(Exit.FAILED)
    code, why = rayjob_outcome(rayjob)
    name = rayjob.get("metadata", {}).get("name", "?")
    word = "RUNNING" if code == RUNNING else Exit(code).name
    click.echo(f"{word}: {name}: {why}")
    sys.exit(int(code))
