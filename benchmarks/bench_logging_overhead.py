"""What does tracking cost the training loop? Runs the default `make train` workload with
``logger=none`` and with ``logger=wandb+tb`` (W&B offline, image panels on), alternating so both
see the same machine load, and prints the ratio of their mean epoch times (target: <= 1.05).

    .venv/bin/python benchmarks/bench_logging_overhead.py [--quick] [--repeats 2] [--epochs 2] \
        [overrides...]

Runs land in a temporary folder; the summary is printed (``make bench`` puts it in RESULTS.md).
The first epoch of each run is left out: it includes the one-off start of the loader workers and
of W&B's side process, which is not a per-epoch cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, Result  # noqa: E402

VARIANTS = {"none": ["logger=none"], "wandb+tb": ["logger=wandb+tb"]}


def run_once(name: str, overrides: list, out: Path, index: int, epochs: int) -> list:
    run_name = f"{name.replace('+', '_')}_{index}"
    cmd = [sys.executable, "-m", "event_seg.train", *VARIANTS[name], f"run_name={run_name}",
           f"paths.output_root={out}", f"trainer.epochs={epochs}", "trainer.progress_bar=false",
           "trainer.inference.enabled=true", *overrides]
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    metrics = json.loads((out / run_name / "metrics.json").read_text())
    return metrics["epoch_times_s"][1:]


def run(quick: bool = False, repeats: int = 0, epochs: int = 0, overrides=()) -> Result:
    repeats = repeats or (1 if quick else 2)  # single epochs scatter by +-2 s on a shared 2-core machine
    epochs = epochs or 2  # the first epoch of each run is dropped (start-up), the second measured
    # Full default epochs: panels cost a fixed amount per epoch (10 batches per stage), so a
    # shortened epoch would overstate their share. --quick shortens anyway, as a smoke check.
    overrides = list(overrides) or (["trainer.limit_batches=15"] if quick else [])
    times = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as out:
        for i in range(repeats):
            for name in VARIANTS:  # alternate, so drifting machine load hits both alike
                times[name].extend(run_once(name, overrides, Path(out), i, epochs))
    means = {name: statistics.mean(t) for name, t in times.items()}
    return Result(
        question=f"Logging overhead: logger=wandb+tb (W&B offline, panels on) vs logger=none "
                 f"({' '.join(overrides) or 'default epochs'}, {repeats} x {epochs - 1} "
                 f"epoch(s) each)",
        header=["logger", "mean epoch (s)", "epochs measured"],
        rows=[[name, means[name], len(times[name])] for name in VARIANTS],
        ratio_name="wandb+tb / none", ratio=means["wandb+tb"] / means["none"], target="<= 1.05",
        extra={"epoch_times_s": times})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=0)
    args, overrides = parser.parse_known_args()
    run(args.quick, args.repeats, args.epochs, overrides).print()


if __name__ == "__main__":
    main()
