"""Kill points for the crash-recovery tests.

``EVENT_SEG_CRASH_AT=<stage>:<epoch>[:<batch>]`` makes the process SIGKILL itself at that point
(``train``/``val``/``inference`` after the given batch, ``save`` after the checkpoint's bytes are
in the temp file but before it replaces ``last.pt``, ``finish`` after ``metrics.json`` is written
but before the checkpoints are trimmed). A real SIGKILL, delivered where a test can
name it: the process gets no chance to clean up, exactly as under the OOM killer or a node loss.
Unset (always, outside the tests) it costs one dictionary lookup per batch.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

ENV = "EVENT_SEG_CRASH_AT"


def crash_point(stage: str, epoch: int, batch: Optional[int] = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    parts = spec.split(":")
    if parts[0] != stage or int(parts[1]) != epoch:
        return
    if len(parts) > 2 and batch is not None and int(parts[2]) != batch:
        return
    os.kill(os.getpid(), signal.SIGKILL)
