"""``make bench``: where its results go."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_a_quick_run_never_overwrites_the_full_results():
    import run_all

    full = REPO / "benchmarks" / "RESULTS.md"
    quick = run_all.results_path(quick=True, only="")
    assert run_all.results_path(quick=False, only="") == full
    assert quick != full and quick.parent == full.parent
    assert run_all.results_path(quick=True, only="loop") is None  # a subset: printed only
    assert run_all.results_path(quick=True, only="", out="/tmp/x.md") == Path("/tmp/x.md")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(quick)], cwd=REPO)
    assert ignored.returncode == 0, f"{quick} is not ignored by git"
    shown = subprocess.run([sys.executable, "benchmarks/run_all.py", "--help"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    assert quick.name in " ".join(shown.split())
