"""Regenerates every training figure the README quotes, from the code as it is now.

    .venv/bin/python scripts/readme_figures.py            # make train + make compare (~15 min)
    .venv/bin/python scripts/readme_figures.py --no-compare

Runs the default training (what `make train` runs) and `benchmarks/compare_modalities.py`, then
rewrites the README blocks between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``
markers: the `make train` log excerpt, its paragraph under *Figures*, and the modality table.
Everything else in the README is left as it is; `git diff README.md` shows what moved.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The log lines the README excerpt keeps (the rest is progress bars and details).
KEPT = re.compile(r"\]\[event_seg(\.engine\.trainer)?\]\[INFO\] - (Dataset |Training |epoch |test )")


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- figures:{name} -->", f"<!-- /figures:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{body.rstrip()}\n{end}", text)


def make_train() -> dict:
    """The default run, as `make train` starts it, in a folder of its own under outputs/."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [sys.executable, "-m", "event_seg.train", f"trial_timestamp=readme_{stamp}"]
    print("$", " ".join(cmd[1:]), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(proc.stdout + proc.stderr)
    lines = [re.sub(r"^\[[^\]]*\]", "[...]", line) for line in
             (proc.stdout + proc.stderr).splitlines() if KEPT.search(line)]
    run_dir = REPO / "outputs" / f"unet_readme_{stamp}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    series = {tag: [e.value for e in acc.Scalars(tag)] for tag in ("train_loss", "val_mean_iou")}
    return {"lines": lines, "wall_s": wall, "metrics": metrics, "series": series,
            "run_dir": run_dir}


def train_excerpt(run: dict) -> str:
    epochs = [line for line in run["lines"] if "] - epoch " in line]
    head = [line for line in run["lines"] if "] - Dataset " in line or "] - Training " in line]
    tail = [line for line in run["lines"] if "] - test " in line]
    lines = [*head, epochs[0], "...", epochs[-1], *tail]
    # The user's home and the run's own timestamp are the reader's, not ours.
    text = "\n".join(lines).replace(str(Path.home()), "~")
    return f"```\n{text}\n```"


def train_paragraph(run: dict) -> str:
    m, s = run["metrics"], run["series"]
    minutes, seconds = divmod(round(run["wall_s"]), 60)
    per_epoch = sum(m["epoch_times_s"]) / len(m["epoch_times_s"])
    return (
        f"**`make train`** (default: U-Net/ResNet-18, RGB + 5-bin voxel grid, 96x192, "
        f"{m['epochs']} epochs, 180 training frames, TensorBoard with panels and inference "
        f"during training): {minutes} min {seconds:02d} s from start to the final test score "
        f"with the synthetic set already generated (the first run adds about 25 s to generate "
        f"it), about {per_epoch:.0f} s per epoch; plus the one-time install (about 2.5 min on a "
        f"fresh machine). It reaches `val_mean_iou` {m['best_val_mean_iou']:.3f} (from "
        f"{s['val_mean_iou'][0]:.3f} after epoch 1; train loss {s['train_loss'][0]:.2f} -> "
        f"{s['train_loss'][-1]:.2f}) and `test_mean_iou` {m['test_mean_iou']:.3f} on the "
        f"all-dark/over-exposed test split. `scripts/readme_figures.py` reruns this and the "
        f"table below and rewrites these figures.")


def compare() -> str:
    proc = subprocess.run([sys.executable, "benchmarks/compare_modalities.py"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stdout + proc.stderr)
    saved = re.search(r"saved (\S+\.json)", proc.stdout).group(1)
    rows = json.loads(Path(saved).read_text())["runs"]
    best_val = max(r["best_val_mean_iou"] for r in rows)
    best_test = max(r["test_mean_iou"] for r in rows)
    out = ["| input | val mIoU (40% hard frames) | test mIoU (all dark / over-exposed) | test pixel acc. |",
           "| --- | --- | --- | --- |"]
    for r in rows:
        val, test = (f"{r[k]:.3f}" for k in ("best_val_mean_iou", "test_mean_iou"))
        val = f"**{val}**" if r["best_val_mean_iou"] == best_val else val
        test = f"**{test}**" if r["test_mean_iou"] == best_test else test
        out.append(f"| `{r['modality']}` | {val} | {test} | {r['test_pixel_accuracy']:.3f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compare", action="store_true", help="skip the modality table")
    args = parser.parse_args()
    os.chdir(REPO)
    run = make_train()
    text = README.read_text()
    text = replace_block(text, "make-train-log", train_excerpt(run))
    text = replace_block(text, "make-train", train_paragraph(run))
    if not args.no_compare:
        text = replace_block(text, "compare", compare())
    README.write_text(text)
    print(train_excerpt(run))
    print(f"README.md updated (run folder {run['run_dir']})")


if __name__ == "__main__":
    main()
