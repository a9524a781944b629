"""Does fusing events help where the frame camera fails? Trains the same model on the synthetic
set with ``rgb`` and with ``rgb+events`` and compares mean IoU on the test split, which holds only
very dark or over-exposed frames (and on the mixed validation split).

    .venv/bin/python benchmarks/compare_modalities.py [extra Hydra overrides...]

Each run is a normal training run under outputs/ (its own folder, log and checkpoints); the
table is printed and saved as outputs/compare_modalities_<timestamp>.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("rgb", "rgb+events", "events")


def main(extra: list[str]) -> None:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    output_root = REPO / "outputs"
    rows = []
    for modality in MODALITIES:
        run_name = f"compare_{modality.replace('+', '_')}_{stamp}"
        cmd = [sys.executable, "-m", "event_seg.train", f"dataset.modality={modality}",
               f"run_name={run_name}", f"trial_timestamp={stamp}", "logger=none",
               "trainer.progress_bar=false", *extra]
        print(f"$ {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True)
        metrics = json.loads((output_root / run_name / "metrics.json").read_text())
        rows.append({"modality": modality, "best_val_mean_iou": metrics["best_val_mean_iou"],
                     "test_mean_iou": metrics.get("test_mean_iou"),
                     "test_pixel_accuracy": metrics.get("test_pixel_accuracy"),
                     "minutes": (time.perf_counter() - started) / 60})
    print("\n| input | val mIoU (mixed exposure) | test mIoU (dark / over-exposed) | test pixel acc. |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['modality']} | {r['best_val_mean_iou']:.3f} | {r['test_mean_iou']:.3f} "
              f"| {r['test_pixel_accuracy']:.3f} |")
    out = output_root / f"compare_modalities_{stamp}.json"
    out.write_text(json.dumps({"overrides": extra, "runs": rows}, indent=2))
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
