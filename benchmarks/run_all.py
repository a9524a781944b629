"""``make bench``: every benchmark in one run, each printing its table and ratio, and all of
them written to benchmarks/RESULTS.md with the machine description.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only representations,startup,...]

A ``--quick`` run (fewer sizes and repeats) writes benchmarks/RESULTS.quick.md instead (ignored
by git): its figures are noisier and must not replace the full ones. ``--only`` prints only.
``--out FILE`` writes there whatever the other options.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, machine  # noqa: E402

BENCHMARKS = {
    "representations": "bench_representations",
    "loop": "bench_loop_overhead",
    "logging": "bench_logging_overhead",
    "data_stall": "bench_data_stall",
    "startup": "bench_startup",
    "simulator": "bench_simulator",
    "input_pipeline": "bench_input_pipeline",
}


FULL_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
QUICK_RESULTS = Path(__file__).resolve().parent / "RESULTS.quick.md"


def results_path(quick: bool, only: str, out=None):
    """Where the results go, or None to print only: the tracked RESULTS.md holds the full run's
    figures alone, so a quick run goes beside it and a subset (``--only``) is not written."""
    if out:
        return Path(out)
    if only:
        return None
    return QUICK_RESULTS if quick else FULL_RESULTS


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=f"A full run writes {FULL_RESULTS.relative_to(REPO)}; --quick writes "
               f"{QUICK_RESULTS.relative_to(REPO)} (ignored by git) and leaves the full figures "
               f"alone; --only prints only; --out FILE writes FILE.")
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer sizes and repeats; written to "
                             f"{QUICK_RESULTS.relative_to(REPO)}, not RESULTS.md")
    parser.add_argument("--only", default="", help="comma-separated names (printed only): "
                        + ",".join(BENCHMARKS))
    parser.add_argument("--out", default=None, help="write the results to this file")
    args = parser.parse_args()
    out = results_path(args.quick, args.only, args.out)
    chosen = [n for n in BENCHMARKS if not args.only or n in args.only.split(",")]
    started = time.perf_counter()
    sections, summary, failed = [], [], []
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            result = importlib.import_module(BENCHMARKS[name]).run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        result.print()
        seconds = time.perf_counter() - t0
        sections.append(f"## {result.question}\n\n{result.table()}\n\n**{result.verdict()}**"
                        + (f"\n\n{result.note}" if result.note else "")
                        + f"\n\n(`{BENCHMARKS[name]}.py`, {seconds:.0f} s)")
        met = {True: "yes", False: "**no**", None: "-"}[result.met]
        summary.append(f"| {name} | {result.ratio_name} | {result.ratio:.3f} | "
                       f"{result.target or '-'} | {met} |")
    total = time.perf_counter() - started
    text = "\n".join([
        "# Benchmark results",
        "",
        f"Written by `make bench` ({'--quick, ' if args.quick else ''}{total / 60:.1f} min) on "
        f"{datetime.date.today()}.",
        f"Machine: {machine()}.",
        "",
        "Every figure is a ratio of work measured side by side in the same run (see each script's",
        "docstring for what is compared). Rerun: `make bench` (or `.venv/bin/python",
        "benchmarks/run_all.py --only startup,loop`).",
        "",
        "| benchmark | ratio | measured | target | met |",
        "| --- | --- | --- | --- | --- |",
        *summary,
        "",
        *[s + "\n" for s in sections],
    ])
    if out is not None:
        out.write_text(text)
        shown = out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out
        print(f"\nwrote {shown} in {total / 60:.1f} min")
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
