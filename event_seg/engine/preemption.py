"""Graceful stops on SIGTERM (SLURM pre-emption, `kill`) and SIGINT (Ctrl-C).

The first signal asks the loop to stop at the next batch boundary; the run then closes its
loggers (W&B marks the run failed with the signal's exit code instead of leaving it "crashed")
and prints the command that resumes it. A second Ctrl-C exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Raised at a batch boundary after a stop was requested."""

    def __init__(self, signum: int, epoch: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} during epoch {epoch}")
        self.signum = signum
        self.epoch = epoch

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopRequest:
    """Context manager that turns SIGTERM/SIGINT into a flag checked between batches."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            os._exit(130)  # a second Ctrl-C: out now, no clean-up
        if self.signum is None:
            self.signum = signum
            # Not through logging: the signal may land while the main thread is inside a log
            # handler's write to the same file (a reentrant-call error). A raw write to stderr
            # is safe here; the stop itself is logged at the batch boundary.
            os.write(2, f"{signal.Signals(signum).name} received: stopping at the next batch "
                        f"boundary (Ctrl-C again to exit at once)\n".encode())

    def check(self, epoch: int) -> None:
        if self.signum is not None:
            raise Preempted(self.signum, epoch)
