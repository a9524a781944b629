"""Regenerates every training figure the README quotes, from the code as it is now.

    .venv/bin/python scripts/readme_figures.py            # make train + make compare (~15 min)
    .venv/bin/python scripts/readme_figures.py --no-compare
    .venv/bin/python scripts/readme_figures.py --reuse outputs/unet_<ts> <wall s> outputs/compare_modalities_<ts>.json

Runs the default training (what `make train` runs) and `benchmarks/compare_modalities.py`, then
rewrites the README blocks between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``
markers: the `make train` log excerpt, its paragraph under *Figures* (naming the machine it ran
on), and the modality table. Everything else in the README is left as it is, the table of what
other machines measured included (add this machine's row there by hand); `git diff README.md`
shows what moved. ``--reuse`` describes this machine too: reuse runs made here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
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
    cmd = [sys.executable, "-m", "event_seg.train", f"trial_timestamp={stamp}"]
    print("$", " ".join(cmd[1:]), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(proc.stdout + proc.stderr)
    return run_summary(REPO / "outputs" / f"unet_{stamp}", proc.stdout + proc.stderr, wall)


def run_summary(run_dir: Path, log: str, wall_s: float) -> dict:
    """What the README quotes of one finished run: its key log lines, metrics and curves."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = [re.sub(r"^\[[^\]]*\]", "[...]", line) for line in log.splitlines()
             if KEPT.search(line)]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    series = {tag: [e.value for e in acc.Scalars(tag)] for tag in ("train_loss", "val_mean_iou")}
    # Where and when it ran: times follow the CPU, and scores differ slightly between CPU types.
    when = time.strftime("%Y-%m-%d", time.localtime((run_dir / "metrics.json").stat().st_mtime))
    return {"lines": lines, "wall_s": wall_s, "metrics": metrics, "series": series,
            "run_dir": run_dir, "machine": machine(), "date": when}


def train_excerpt(run: dict) -> str:
    epochs = [line for line in run["lines"] if "] - epoch " in line]
    head = [line for line in run["lines"] if "] - Dataset " in line or "] - Training " in line]
    tail = [line for line in run["lines"] if "] - test " in line]
    lines = [*head, epochs[0], "...", epochs[-1], *tail]
    # Paths as a user of this checkout sees them.
    text = "\n".join(lines).replace(f"{REPO}/", "").replace(str(Path.home()), "~")
    return f"```\n{text}\n```"


def machine() -> str:
    """The CPU (its name as /proc/cpuinfo gives it), its cores and the GPU, if any."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import machine as described

    return described().split(";")[0]


def train_paragraph(run: dict) -> str:
    m, s = run["metrics"], run["series"]
    minutes, seconds = divmod(round(run["wall_s"]), 60)
    per_epoch = sum(m["epoch_times_s"]) / len(m["epoch_times_s"])
    return textwrap.fill(
        f"**`make train`** (default: U-Net/ResNet-18, RGB + 5-bin voxel grid, 96x192, "
        f"{m['epochs']} epochs, 180 training frames, TensorBoard with panels, confusion matrices "
        f"and inference during training) on {run['machine']}, {run['date']}: {minutes} min "
        f"{seconds:02d} s from start to the final test score with the synthetic set already "
        f"generated (the first run adds about 25 s to generate it), about {per_epoch:.0f} s per "
        f"epoch; plus the one-time install (about 2.5 min on a fresh machine). It reaches "
        f"`val_mean_iou` {m['best_val_mean_iou']:.4f} (from "
        f"{s['val_mean_iou'][0]:.3f} after epoch 1; train loss {s['train_loss'][0]:.2f} -> "
        f"{s['train_loss'][-1]:.2f}) and `test_mean_iou` {m['test_mean_iou']:.4f} on the "
        f"all-dark/over-exposed test split. `scripts/readme_figures.py` reruns this and the "
        f"table below and rewrites these figures.", width=100)


def compare() -> str:
    proc = subprocess.run([sys.executable, "benchmarks/compare_modalities.py"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stdout + proc.stderr)
    saved = re.search(r"saved (\S+\.json)", proc.stdout).group(1)
    return compare_table(json.loads(Path(saved).read_text())["runs"])


def compare_table(rows: list) -> str:
    """The modality table and what it shows, from compare_modalities.py's runs."""
    best_val = max(r["best_val_mean_iou"] for r in rows)
    best_test = max(r["test_mean_iou"] for r in rows)
    out = ["| input | val mIoU (40% hard frames) | test mIoU (all dark / over-exposed) | test pixel acc. |",
           "| --- | --- | --- | --- |"]
    for r in rows:
        val, test = (f"{r[k]:.3f}" for k in ("best_val_mean_iou", "test_mean_iou"))
        val = f"**{val}**" if r["best_val_mean_iou"] == best_val else val
        test = f"**{test}**" if r["test_mean_iou"] == best_test else test
        out.append(f"| `{r['modality']}` | {val} | {test} | {r['test_pixel_accuracy']:.3f} |")
    test = {r["modality"]: r["test_mean_iou"] for r in rows}
    val = {r["modality"]: r["best_val_mean_iou"] for r in rows}
    gain = 100 * (test["rgb+events"] - test["rgb"])
    words = (f"Fusion beats RGB alone by {gain:.0f} mIoU points on the hard frames"
             + (" and is best on the mixed validation split" if val["rgb+events"] == best_val else "")
             + "; on frames where the RGB carries nothing, events alone "
             + ("still edge out fusion after this short schedule."
                if test["events"] > test["rgb+events"] else "do not reach fusion."))
    return "\n".join(out) + "\n\n" + textwrap.fill(words, width=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compare", action="store_true", help="skip the modality table")
    parser.add_argument("--reuse", nargs=3, metavar=("RUN_DIR", "WALL_S", "COMPARE_JSON"),
                        help="rewrite the README from runs made earlier by this script")
    args = parser.parse_args()
    os.chdir(REPO)
    if args.reuse:
        run_dir, wall_s, saved = Path(args.reuse[0]), float(args.reuse[1]), Path(args.reuse[2])
        run = run_summary(run_dir, (run_dir / "train.log").read_text(), wall_s)
        table = compare_table(json.loads(saved.read_text())["runs"])
    else:
        run = make_train()
        table = None if args.no_compare else compare()
    text = README.read_text()
    text = replace_block(text, "make-train-log", train_excerpt(run))
    text = replace_block(text, "make-train", train_paragraph(run))
    if table is not None:
        text = replace_block(text, "compare", table)
    README.write_text(text)
    print(train_excerpt(run))
    print(f"README.md updated (run folder {run['run_dir']})")


if __name__ == "__main__":
    main()
