"""Command line: parsing and printing only; the work is in pipeline.py and friends.

    python -m batch run JOB.yaml [--input URI]... [--output URI] [--set KEY=VALUE]... [--overwrite]
    python -m batch validate JOB.yaml [same options]
    python -m batch demo [--output DIR] [--model HUB_ID]
    python -m batch finetune SPEC.yaml [--set KEY=VALUE]...
    python -m batch cache stats|compact|forget JOB.yaml [--text T | --id ID]...
    python -m batch k8s render JOB.yaml --date YYYY-MM-DD --image IMAGE@sha256:... [--set KEY=VALUE]...

Exit status (batch/outcome.py): 0 succeeded, 1 failed (a retry resumes), 2 published with
unreadable inputs, 3 invalid job or arguments (not worth retrying).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from batch.attempt_log import AttemptLog, stop_on_sigterm
from batch.config import ConfigError, JobConfig, load_job
from batch.outcome import Exit, exit_for_summary


def _job_options(command):
    command = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                           help="Override a job-file field by its dotted path, e.g. tasks.sentiment.model=/models/x")(command)  # fmt: skip
    command = click.option("--output", "output_uri", metavar="URI", help="Override output.uri.")(command)
    command = click.option("--input", "input_uris", multiple=True, metavar="URI", help="Override input.uris (repeatable).")(command)  # fmt: skip
    command = click.option("--date", "run_date", type=click.DateTime(["%Y-%m-%d"]),
                           help="Run date for {date} in the output URI (default: today, UTC).")(command)  # fmt: skip
    return click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))(command)


def _load(job_file: Path, input_uris, output_uri, overrides, run_date) -> JobConfig:
    extra = list(overrides)
    # JSON is YAML: any character in a URI survives the override's YAML reading.
    if input_uris:
        extra.append("input.uris=" + json.dumps(list(input_uris)))
    if output_uri:
        extra.append("output.uri=" + json.dumps(output_uri))
    return load_job(job_file, extra, run_date=run_date.date() if run_date else None)


class _Cli(click.Group):
    """Click exits 2 on a usage error; here 2 means a partial publish, so usage errors exit 3
    (INVALID: not worth retrying) like every other mistake in the command."""

    def main(self, *args, **kwargs):
        if not kwargs.pop("standalone_mode", True):
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(Exit.FAILED)
        except click.ClickException as exc:
            exc.show()
            sys.exit(Exit.INVALID)


@click.group(cls=_Cli)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """Batch translation and sentiment tagging of Parquet corpora with vLLM on Ray Data."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@_job_options
@click.option("--overwrite", is_flag=True, help="Redo a run whose output is already published.")
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster address (default: start a local cluster).")
def run(job_file, input_uris, output_uri, overrides, run_date, overwrite, address):
    """Run JOB_FILE: read, annotate and publish. Exit 0 published, 1 failed (a retry resumes),
    2 published with unreadable inputs, 3 invalid job or arguments (see batch/outcome.py)."""
    _trace_process_start()
    log = AttemptLog(click.echo)
    batch_logger = logging.getLogger("batch")
    batch_logger.addHandler(log.handler)
    stop_on_sigterm(log)
    try:
        code = _run_attempt(log, job_file, input_uris, output_uri, overrides, run_date, overwrite, address)
    finally:
        batch_logger.removeHandler(log.handler)
        log.flush()  # the attempt's log, whatever the outcome
    sys.exit(code)


def _run_attempt(log: AttemptLog, job_file, input_uris, output_uri, overrides, run_date, overwrite, address) -> Exit:
    from batch.io.storage import StorageError
    from batch.pipeline import RunFailed, new_run_id, run as run_job

    try:
        job = _load(job_file, input_uris, output_uri, overrides, run_date)
    except ConfigError as exc:  # no output known yet: this attempt's log is stdout only
        log.echo(f"INVALID: {exc}", err=True)
        return Exit.INVALID
    run_id = new_run_id()
    log.echo(f"log: {log.place(job.output.uri, job.storage, run_id)}")
    try:
        try:
            summary = run_job(job, overwrite=overwrite, ray_address=address, echo=log.echo, run_id=run_id)
        finally:
            _disconnect_ray()  # workers' late log lines must not land after our last line
    except ConfigError as exc:
        log.echo(f"INVALID: {exc}", err=True)
        return Exit.INVALID
    except (RunFailed, StorageError) as exc:
        log.echo(f"FAILED: {exc}", err=True)
        return Exit.FAILED
    except Exception as exc:  # noqa: BLE001 - the last line must say FAILED, whatever happened
        logging.getLogger("batch").exception("run failed")
        log.echo(f"FAILED: {type(exc).__name__}: {exc}", err=True)
        return Exit.FAILED
    for line in summary.lines():
        log.echo(line)
    code = exit_for_summary(summary.status, summary.unreadable_inputs)
    # Exit 2: published, but some input files could not be read (they are in the manifest).
    log.echo(f"{'SUCCEEDED' if code == Exit.SUCCEEDED else 'PARTIAL'}: {summary.status}: {summary.output}")
    return code


def _trace_process_start() -> None:
    """The trace's origin: when this process started (interpreter and imports included)."""
    from batch.progress import TRACE, process_started, trace

    if TRACE in os.environ:
        trace("driver.process_start", at=process_started())
        trace("driver.cli_start")


def _disconnect_ray() -> None:
    import ray

    pipeline = sys.modules.get("batch.pipeline")
    if pipeline is not None and pipeline.ray_start_in_flight():  # no worker can log yet: do not wait for it
        return

    if ray.is_initialized():
        from batch.pipeline import stop_ray
        from batch.progress import trace

        trace("driver.ray_shutdown")
        stop_ray()
        trace("driver.ray_stopped")


@main.command()
@_job_options
def validate(job_file, input_uris, output_uri, overrides, run_date):
    """Check JOB_FILE, its inputs and its output without starting any engine. Exit 0 valid,
    3 invalid (each problem named), 1 the storage could not be asked."""
    from batch.io.storage import StorageError
    from batch.pipeline import check_models
    from batch.validate import validate_job_inputs

    try:
        job = _load(job_file, input_uris, output_uri, overrides, run_date)
        check_models(job)
        problems, notes = validate_job_inputs(job)
    except ConfigError as exc:
        click.echo(f"INVALID: {exc}", err=True)
        sys.exit(Exit.INVALID)
    except StorageError as exc:  # the inputs could not be checked: asking again later may work
        click.echo(f"INVALID: {exc}", err=True)
        sys.exit(Exit.FAILED)
    except Exception as exc:  # noqa: BLE001 - validate names what is wrong, never with a traceback
        detail = (str(exc).strip().splitlines() or [""])[0]
        click.echo(f"INVALID: {job_file}: {type(exc).__name__}: {detail}", err=True)
        sys.exit(Exit.INVALID)
    for note in notes:
        click.echo(note)
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        click.echo(f"INVALID: {len(problems)} problem(s) in {job_file}", err=True)
        sys.exit(Exit.INVALID)
    click.echo(f"OK: {job_file}")


@main.command()
@click.option("--output", "output_dir", default="out/demo", show_default=True, help="Where to publish the demo output (base/ and finetune/).")  # fmt: skip
@click.option("--workdir", default=".demo", show_default=True, help="Where the tiny models, the splits and the fine-tune are built.")  # fmt: skip
@click.option("--job", "job_file", default="jobs/demo.yaml", show_default=True, type=click.Path(path_type=Path))
@click.option("--model", default=None, metavar="HUB_ID_OR_DIR", help="A real chat model to fine-tune with LoRA instead of the tiny classifier.")  # fmt: skip
@click.option("--workers", default=2, show_default=True, help="Ray Train workers for the fine-tune.")
def demo(output_dir, workdir, job_file, model, workers):
    """Fine-tune on the sample corpus's gold sentiment, tag the held-out split with the base
    model and with the fine-tune, and print both scores side by side."""
    from batch.demo.loop import DemoPlan, run_demo
    from batch.finetune.command import metrics_table
    from batch.io.storage import StorageError
    from batch.pipeline import RunFailed

    plan = DemoPlan(workdir=Path(workdir), output=Path(output_dir), job_file=job_file, model=model, workers=workers)
    try:
        result = run_demo(plan, echo=click.echo)
    except (ConfigError, RunFailed, StorageError) as exc:
        click.echo(f"FAILED: {exc}", err=True)
        sys.exit(1)
    finally:
        _disconnect_ray()
    click.echo("\nheld-out sentiment, scored by the job's output (python -m batch eval):")
    click.echo(metrics_table({"base": result["base"], "finetune": result["finetune"]}))
    click.echo(f"SUCCEEDED: out of {result['base']['scored']} held-out posts, macro-F1 "
               f"{result['base']['macro_f1']:.2f} (base) -> {result['finetune']['macro_f1']:.2f} (fine-tune); "
               f"outputs in {output_dir}/base and {output_dir}/finetune")  # fmt: skip


def _register_commands() -> None:
    """Commands that live beside the modules they drive."""
    from batch.cache_command import cache
    from batch.evaluate_command import eval_command
    from batch.finetune.command import finetune
    from batch.k8s_command import k8s
    from batch.report.command import report

    main.add_command(report)
    main.add_command(eval_command)
    main.add_command(k8s)
    main.add_command(finetune)
    main.add_command(cache)


_register_commands()

if __name__ == "__main__":
    main()
