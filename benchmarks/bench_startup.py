"""Start-up: wall time of ``python -m event_seg.train --cfg job`` (compose, validate the schema,
print), against a bare ``python -c pass`` measured in the same run, and which heavy libraries
composing imports (none of wandb, segmentation_models_pytorch may be among them).

    .venv/bin/python benchmarks/bench_startup.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, Result  # noqa: E402

HEAVY = ("wandb", "segmentation_models_pytorch", "torch", "albumentations", "cv2", "tensorboard")
PROBE = ("import sys, runpy; sys.argv = ['event_seg.train', '--cfg', 'job'];\n"
         "try:\n    runpy.run_module('event_seg.train', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('IMPORTED', ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)")


def wall(cmd, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "WORLD_SIZE": "1"})
        times.append(time.perf_counter() - started)
    return min(times)


def run(quick: bool = False) -> Result:
    repeats = 3 if quick else 5
    cfg_job = wall([sys.executable, "-m", "event_seg.train", "--cfg", "job"], repeats)
    python = wall([sys.executable, "-c", "pass"], repeats)
    probe = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], cwd=REPO,
                           capture_output=True, text=True, check=True)
    imported = [line.split(" ", 1)[1] if " " in line else "" for line in probe.stderr.splitlines()
                if line.startswith("IMPORTED")][0].split(",")
    imported = [m for m in imported if m]
    forbidden = [m for m in imported if m in ("wandb", "segmentation_models_pytorch")]
    return Result(
        question="Start-up: `python -m event_seg.train --cfg job`",
        header=["command", "wall (s, best of %d)" % repeats],
        rows=[["python -m event_seg.train --cfg job", cfg_job], ["python -c pass", python]],
        ratio_name="--cfg job wall time (s)", ratio=cfg_job, target="<= 1.5",
        note=f"heavy libraries imported while composing: {', '.join(imported) or 'none'}"
             f"{' (FORBIDDEN: ' + ', '.join(forbidden) + ')' if forbidden else ''}",
        extra={"imported": imported, "forbidden": forbidden})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick).print()
