"""`python -m batch finetune SPEC.yaml [--set KEY=VALUE]...`: parsing and printing only.
Registered in batch/cli.py with `main.add_command(finetune)`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batch import evaluate


@click.command("finetune")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a spec field by its dotted path, e.g. training.epochs=5")  # fmt: skip
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster address (default: start a local cluster).")
def finetune(spec_file, overrides, address):
    """Fine-tune a model on labelled Parquet (Ray Train) into a folder the job serves."""
    from batch.config import ConfigError
    from batch.finetune.run import run_finetune
    from batch.finetune.spec import load_spec
    from batch.io.storage import StorageError

    try:
        spec = load_spec(spec_file, list(overrides))
        card = run_finetune(spec, ray_address=address, echo=click.echo)
    except (ConfigError, StorageError) as exc:
        click.echo(f"FAILED: {exc}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last line must say FAILED, whatever happened
        click.echo(f"FAILED: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}", err=True)  # fmt: skip
        sys.exit(1)
    finally:
        _disconnect_ray()
    click.echo(metrics_table(card["metrics"]))
    click.echo(f"SUCCEEDED: {card['method']} fine-tune published to {spec.output} (card: finetune.json)")


def metrics_table(metrics: dict) -> str:
    """Held-out scores of the base and of the fine-tune, side by side."""
    base, tuned = metrics["base"], metrics["finetune"]
    keys = ["macro_f1", "accuracy"] if base.get("task") == "sentiment" else ["bleu", "chrf"]
    rows = [[key, base[key], tuned[key]] for key in keys]
    if base.get("task") == "sentiment":
        rows += [[f"f1 {label}", base["per_class"][label]["f1"], tuned["per_class"][label]["f1"]] for label in base["per_class"]]  # fmt: skip
    return evaluate.table(["held-out", "base", "fine-tune"], rows)


def _disconnect_ray() -> None:
    import ray

    from batch.pipeline import stop_ray

    if ray.is_initialized():
        stop_ray()
