"""``-h``/``--help`` of the console scripts: the usage text on stdout and exit 0; any other
``-option`` is a one-line error and exit 2 (Hydra would otherwise take it for an override)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def command(name: str):
    script = Path(sys.executable).parent / name
    if script.exists():  # the console script itself, as installed
        return [str(script)]
    return [sys.executable, "-m", "event_seg." + name.rsplit("-", 1)[1]]


@pytest.mark.parametrize("name, usage", [
    ("event-seg-evaluate", "usage: event-seg-evaluate checkpoint=<path>"),
    ("event-seg-prepare", "usage: event-seg-prepare [overrides]"),
])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_exits_0(name, usage, flag):
    proc = subprocess.run([*command(name), "x=1", flag], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(usage) and "dataset.root" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("module", ["evaluate", "prepare"])
def test_other_options_are_one_line_errors(module, capsys):
    import importlib

    main = importlib.import_module(f"event_seg.{module}").main
    assert main(["checkpoint=x.pt", "--cfg", "job"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: unknown option --cfg")
    assert "Traceback" not in err and captured.out == ""
