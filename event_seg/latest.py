"""``trial_timestamp=latest``: the newest earlier run of the same name (or, for a sweep, the
newest sweep folder, so ``-m ... trial_timestamp=latest`` resumes the last sweep).

The run folder is named before the task function runs (``hydra.run.dir`` interpolates the
timestamp), so ``latest`` is replaced on the command line before Hydra composes for real
(launch.py composes once with a placeholder timestamp to learn the folder pattern).

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
    runs = ([p for p in parent.glob(glob) if p.is_dir() and fnmatch.fnmatch(p.name, glob)
             and not is_unused(p)] if PLACEHOLDER not in str(parent) and parent.is_dir() else [])
    if not runs:
        what = "sweep" if sweep else "run"
        raise ConfigError(f"{KEY}=latest: no earlier {what} matches {parent / glob}")
    timestamps = {p: regex.match(p.name).group(1) for p in runs}
    newest = max(runs, key=lambda p: _started(timestamps[p], p))
    return timestamps[newest]


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
