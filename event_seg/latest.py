"""``trial_timestamp=latest``: find the newest earlier run of the same name pattern (or, for a
sweep, the newest sweep folder, so ``-m ... trial_timestamp=latest`` resumes the last sweep).

The run folder is named before the task function runs (``hydra.run.dir`` interpolates the
timestamp), so ``latest`` is replaced on the command line, before Hydra composes for real: the
config is composed once with a placeholder timestamp to learn the run-name pattern and the output
root, and the newest matching folder that holds a checkpoint wins.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import List

from .errors import ConfigError

KEY = "trial_timestamp"
PLACEHOLDER = "LATEST-TIMESTAMP-PLACEHOLDER"


def expand_latest(argv: List[str], config_dir: str, config_name: str = "train") -> List[str]:
    """Returns ``argv`` with ``trial_timestamp=latest`` replaced by a concrete timestamp."""
    matches = [i for i, a in enumerate(argv) if a.lstrip("+") == f"{KEY}=latest"]
    if not matches:
        return argv
    from hydra import compose, initialize_config_dir

    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")
                 and a.lstrip("+").split("=", 1)[0] != KEY and not a.startswith("hydra")]
    if is_sweep(argv):
        # Composing needs one value per key: drop the swept ones (they do not move the root).
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(overrides)
        overrides = [o.input_line for o in parsed if not o.is_sweep_override()
                     and o.key_or_group != "hparams_search"]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides + [f"{KEY}={PLACEHOLDER}"])
    pattern = str(cfg.run_name)
    if PLACEHOLDER not in pattern:
        raise ConfigError(f"{KEY}=latest needs a run_name that contains the timestamp "
                          f"(run_name={pattern})")
    root = Path(cfg.paths.output_root)
    if is_sweep(argv):
        timestamp = latest_sweep(root / "multirun")
        return [f"{KEY}={timestamp}" if i in matches else a for i, a in enumerate(argv)]
    glob = pattern.replace(PLACEHOLDER, "*")
    regex = re.compile(re.escape(pattern).replace(re.escape(PLACEHOLDER), "(.+)") + r"\Z")
    runs = [p for p in root.glob(glob) if p.is_dir() and fnmatch.fnmatch(p.name, glob)
            and (p / "checkpoints" / "last.pt").is_file()]
    if not runs:
        raise ConfigError(f"{KEY}=latest: no earlier run with a checkpoint matches {root / glob}")
    newest = max(runs, key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime)
    timestamp = regex.match(newest.name).group(1)
    out = list(argv)
    for i in matches:
        out[i] = f"{KEY}={timestamp}"
    return out


def is_sweep(argv: List[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.startswith("hparams_search=") for a in argv[1:])


def latest_sweep(sweeps: Path) -> str:
    """The newest sweep folder under ``<output_root>/multirun`` (a re-run resumes it)."""
    folders = [p for p in sweeps.glob("*") if p.is_dir()] if sweeps.is_dir() else []
    if not folders:
        raise ConfigError(f"{KEY}=latest: no earlier sweep in {sweeps}")
    return max(folders, key=lambda p: p.stat().st_mtime).name
