"""``trial_timestamp=latest``: the newest earlier run of the same name (or, for a sweep, the
newest sweep folder, so ``-m ... trial_timestamp=latest`` resumes the last sweep).

The run folder is named before the task function runs (``hydra.run.dir`` interpolates the
timestamp), so ``latest`` is replaced on the command line before Hydra composes for real
(launch.py composes once with a placeholder timestamp to learn the folder pattern).

A folder is a run of this name only when its timestamp part is that run's timestamp: the glob
``unet_*`` also matches ``unet_small_<time>`` (model.name=unet_small), which is another name's
run. The timestamp a run recorded (its config.yaml, or Hydra's .hydra/config.yaml and
multirun.yaml) decides; a folder that recorded none yet counts only when the part has the
default timestamp form (custom ``trial_timestamp=foo`` values are recorded at the start).

"Newest" is the run started last, whether or not it wrote a checkpoint: a run stopped in its
first epoch is the one a user means to continue, not an older one that got further. Resuming it
then follows the usual rules (resume_rules.py): a finished run is skipped or refused, never
rewritten.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import datetime
from pathlib import Path

from .errors import ConfigError

KEY = "trial_timestamp"


def latest_timestamp(pattern: str, sweep: bool, run_name: str = "") -> str:
    """The timestamp of the newest folder matching ``pattern`` (launch.PLACEHOLDER marks the
    timestamp in it)."""
    from .launch import PLACEHOLDER

    if PLACEHOLDER not in pattern:
        raise ConfigError(f"{KEY}=latest needs a run folder named by the timestamp; "
                          f"run_name={run_name} leaves it out")
    folder = Path(pattern)
    glob = folder.name.replace(PLACEHOLDER, "*")
    regex = re.compile(re.escape(folder.name).replace(re.escape(PLACEHOLDER), "(.+)") + r"\Z")
    parent = Path(str(folder.parent))
    from .engine.folder_lock import is_unused

    # A folder holding only a lock file is a command that never ran (or is just starting).
    found = ([p for p in parent.glob(glob) if p.is_dir() and fnmatch.fnmatch(p.name, glob)
              and not is_unused(p)] if PLACEHOLDER not in str(parent) and parent.is_dir() else [])
    timestamps = {p: regex.match(p.name).group(1) for p in found}
    runs = [p for p in found if _is_run_of(p, timestamps[p])]
    if not runs:
        what = "sweep" if sweep else "run"
        raise ConfigError(f"{KEY}=latest: no earlier {what} named "
                          f"{parent / folder.name.replace(PLACEHOLDER, '<timestamp>')}")
    newest = max(runs, key=lambda p: _started(timestamps[p], p))
    return timestamps[newest]


# Where a run folder records the timestamp it was started with (top-level key).
RECORDS = ("config.yaml", ".hydra/config.yaml", "multirun.yaml")
_RECORDED = re.compile(rf"^{KEY}:(.*)$", re.MULTILINE)


def _is_run_of(folder: Path, timestamp: str) -> bool:
    """True when ``folder`` holds the run whose trial_timestamp is ``timestamp``."""
    import yaml

    for name in RECORDS:
        try:
            found = _RECORDED.search((folder / name).read_text(errors="replace"))
        except OSError:
            continue
        if found:
            try:
                return str(yaml.safe_load(found.group(1))) == timestamp
            except yaml.YAMLError:
                continue
    return _default_form(timestamp)


def _default_form(timestamp: str) -> bool:
    from .launch import TIMESTAMP_FORMAT

    base, _, nth = timestamp.rpartition("_")
    for text in [timestamp, *([base] if nth.isdigit() else [])]:
        try:
            datetime.strptime(text, TIMESTAMP_FORMAT)
            return True
        except ValueError:
            pass
    return False


def _started(timestamp: str, folder: Path):
    """When a run started: its timestamp where it has the default form (``_2`` for the second
    run started in one second), else the time its folder was last changed."""
    from .launch import TIMESTAMP_FORMAT

    base, _, nth = timestamp.rpartition("_")
    for text, n in [(timestamp, 1), *([(base, int(nth))] if nth.isdigit() else [])]:
        try:
            return (datetime.strptime(text, TIMESTAMP_FORMAT).timestamp(), n)
        except ValueError:
            pass
    return (folder.stat().st_mtime, 0)
