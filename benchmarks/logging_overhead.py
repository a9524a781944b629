"""What does tracking cost the training loop? Runs the default `make train` workload with
``logger=none`` and with ``logger=wandb+tb`` (W&B offline, image panels on), alternating so both
see the same machine load, and prints the ratio of their mean epoch times (target: <= 1.05).

    .venv/bin/python benchmarks/logging_overhead.py [--repeats 2] [--epochs 2] [overrides...]

Runs land in outputs/bench_logging_<timestamp>_*; the summary is printed and saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"none": ["logger=none"], "wandb+tb": ["logger=wandb+tb"]}


def run_once(name: str, overrides: list, stamp: str, index: int, epochs: int) -> list:
    run_name = f"bench_logging_{stamp}_{name.replace('+', '_')}_{index}"
    cmd = [sys.executable, "-m", "event_seg.train", *VARIANTS[name], f"run_name={run_name}",
           f"trainer.epochs={epochs}", "trainer.progress_bar=false", *overrides]
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((REPO / "outputs" / run_name / "metrics.json").read_text())
    return metrics["epoch_times_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args, overrides = parser.parse_known_args()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    times = {name: [] for name in VARIANTS}
    for i in range(args.repeats):
        for name in VARIANTS:  # alternate, so drifting machine load hits both alike
            epoch_times = run_once(name, overrides, stamp, i, args.epochs)
            times[name].extend(epoch_times)
            print(f"run {i} {name:9s} epoch times: {', '.join(f'{t:.1f}s' for t in epoch_times)}",
                  flush=True)
    means = {name: statistics.mean(t) for name, t in times.items()}
    ratio = means["wandb+tb"] / means["none"]
    print(f"\nmean epoch time  logger=none: {means['none']:.2f}s   logger=wandb+tb: "
          f"{means['wandb+tb']:.2f}s   ratio: {ratio:.3f} (target <= 1.05)")
    out = REPO / "outputs" / f"bench_logging_{stamp}.json"
    out.write_text(json.dumps({"overrides": overrides, "epoch_times_s": times,
                               "mean_s": means, "ratio": ratio}, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
