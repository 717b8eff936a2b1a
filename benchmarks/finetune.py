"""Training throughput of `python -m batch finetune` on Ray Train: the demo's classifier
fine-tune (the tiny model, the sample corpus's 256 training posts) with 1 and with 2 CPU
workers, in one invocation on the same machine. Prints examples/s side by side; record it in
BENCHMARKS.md with the command that made it.

    python benchmarks/finetune.py                 # 4 epochs each, 1 and 2 workers
    python benchmarks/finetune.py --epochs 2 --workers 1,2,4

examples/s is the mean over epochs after the first (the first pays for the worker's warm-up);
start-up (Ray, the workers' imports, the base model load) is reported apart, as wall time.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()

    from batch.demo.loop import write_splits
    from batch.demo.models import DEMO_LABELS, build_classifier
    from batch.finetune.run import run_finetune
    from batch.finetune.spec import load_spec

    root = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    base = build_classifier(root / "tiny-classifier", list(DEMO_LABELS))
    labelled, _ = write_splits(root)
    rows = []
    for workers in [int(n) for n in args.workers.split(",")]:
        spec = load_spec(REPO / "jobs/finetune_sentiment.yaml", [
            f"base_model={base}", f'data.uris=["{labelled}"]', f"output={root}/out-{workers}",
            f"scaling.workers={workers}", f"training.epochs={args.epochs}",
        ])  # fmt: skip
        started = time.time()
        card = run_finetune(spec, echo=lambda line: None)
        wall = time.time() - started
        epochs = card["training"]["epochs"][1:] or card["training"]["epochs"]
        rate = sum(e["examples"] for e in epochs) / sum(e["seconds"] for e in epochs)
        rows.append((workers, rate, wall, card["metrics"]["finetune"]["macro_f1"]))
    print(f"# {platform.node()} {platform.machine()}, {args.epochs} epochs of {card['data']['rows']['train']} examples")
    print(f"{'workers':>7}  {'examples/s':>10}  {'vs 1 worker':>11}  {'wall s':>7}  {'held-out macro-F1':>17}")
    for workers, rate, wall, f1 in rows:
        print(f"{workers:>7}  {rate:>10.1f}  {rate / rows[0][1]:>11.2f}  {wall:>7.1f}  {f1:>17.3f}")


if __name__ == "__main__":
    main()
