"""``-h``/``--help`` of the console scripts: the usage text on stdout and exit 0; any other
``-option`` is a one-line error and exit 2 (Hydra would otherwise take it for an override)."""

from __future__ import annotations

import os
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


def train(*args):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([*command("event-seg-train"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_train_help_is_ours_with_the_groups_and_the_most_used_keys(flag):
    proc = train("model=fpn", flag)
    out = proc.stdout
    assert proc.returncode == 0 and proc.stderr == "", out + proc.stderr
    assert out.startswith("usage: ") and "event_seg.train" in out.splitlines()[0]
    # The groups and their options as conf/ holds them, with the default marked.
    options = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
    assert any(line.split()[:1] == ["model"] and ", ".join(options) in line and "[unet]" in line
               for line in out.splitlines()), out
    assert "hydra/launcher" in out and "  schema" not in out  # not a group of options
    for key in ("trainer.epochs", "trainer.batch_size", "dataset.root", "trial_timestamp"):
        assert key in out
    assert "docs/configuration.md" in out and "--hydra-help" in out
    assert "powered by Hydra" not in out and len(out.splitlines()) < 70


@pytest.mark.parametrize("args, expected", [
    (["--hydra-help"], "--multirun"),  # Hydra's own flags
    (["--info"], "Defaults List"),
    (["--info", "defaults"], "Defaults List"),
    (["--cfg", "job", "trainer.epochs=3"], "epochs: 3"),
])
def test_hydra_flags_print_and_exit_0(args, expected):
    proc = train(*args)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert expected in proc.stdout and "Traceback" not in output and "error" not in proc.stderr
    assert "exclude_keys" not in output and "PLACEHOLDER" not in output


def test_train_help_lists_every_allowed_value_of_the_keys_it_shows():
    from event_seg.config import CHOICES

    out = train("--help").stdout
    for key, allowed in CHOICES.items():
        line = next((x for x in out.splitlines() if x.split()[:1] == [key]), None)
        if line is not None:
            assert all(v in line.split() for v in allowed), (key, line)
