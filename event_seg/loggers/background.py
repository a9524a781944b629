"""Keeps tracking off the training step's critical path.

Every logger call, and the rendering and encoding of image panels, runs on one worker thread,
in the order the trainer issued it. The training loop only hands over CPU arrays it already has
(plus the predicted class ids of the few visualised samples) and goes on.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Callable, Optional

import numpy as np

from .base import Logger, LoggerGroup

log = logging.getLogger(__name__)


def _lower_thread_priority() -> None:
    """Runs this thread at the lowest CPU priority (Linux schedules threads individually), so
    that on a busy machine panel rendering and encoding use the cycles training leaves idle
    instead of taking them from the training step."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not permitted: only slower, still correct
        pass


class BackgroundLogging(Logger):
    """Wraps a :class:`LoggerGroup`; same interface, plus :meth:`log_batch` for panels.

    Args:
        group: the loggers to feed.
        render: ``render(rgb, events, mask, pred, ids) -> Panels`` (see viz.render_panels), run on
            the worker thread.
        max_pending: how many calls may wait; past that the trainer waits (memory stays bounded).
    """

    name = "background"

    def __init__(self, group: LoggerGroup, render: Optional[Callable] = None,
                 max_pending: int = 256):
        self.group = group
        self.render = render
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._work, name="event-seg-logging", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def active(self) -> bool:
        """False when no logger is left: then nothing is rendered at all."""
        return len(self.group) > 0

    def _work(self) -> None:
        _lower_thread_priority()
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                fn, args = item
                fn(*args)
            except Exception as e:  # a rendering bug must not kill the thread (or training)
                log.warning("Background logging failed (%s: %s)", type(e).__name__, e)
            finally:
                self._queue.task_done()

    def _put(self, fn, *args) -> None:
        if self._closed or not self.active:
            return
        self._queue.put((fn, args))

    def log_config(self, config, meta) -> None:
        self._put(self.group.log_config, config, meta)

    def log_metrics(self, metrics, epoch) -> None:
        self._put(self.group.log_metrics, dict(metrics), epoch)

    def log_images(self, stage, batch_idx, panels, epoch) -> None:
        self._put(self.group.log_images, stage, batch_idx, panels, epoch)

    def log_step_metrics(self, metrics, step) -> None:
        self._put(self.group.log_step_metrics, dict(metrics), step)

    def log_figure(self, tag, png, height, width, epoch) -> None:
        self._put(self.group.log_figure, tag, png, height, width, epoch)

    def log_table(self, name, columns, rows) -> None:
        self._put(self.group.log_table, name, list(columns), [list(r) for r in rows])

    def log_confusion(self, stage: str, epoch: int, confusion, class_names) -> None:
        """Renders a confusion-matrix picture on the worker, then logs it."""
        self._put(self._render_confusion, stage, epoch, confusion, list(class_names))

    def _render_confusion(self, stage, epoch, confusion, class_names) -> None:
        from ..viz import confusion_image, encode_png

        image = confusion_image(confusion, class_names,
                                f"{stage} confusion, epoch {epoch} (% of each true class)")
        self.group.log_figure(f"{stage}/confusion_matrix", encode_png(image), image.shape[0],
                              image.shape[1], epoch)

    def log_batch(self, stage: str, batch_idx: int, epoch: int, rgb: np.ndarray,
                  events: np.ndarray, mask: np.ndarray, pred: np.ndarray, ids) -> None:
        """Renders panels from raw arrays on the worker, then logs them."""
        if self.render is None:
            return
        self._put(self._render_and_log, stage, batch_idx, epoch, rgb, events, mask, pred, ids)

    def _render_and_log(self, stage, batch_idx, epoch, rgb, events, mask, pred, ids) -> None:
        panels = self.render(rgb, events, mask, pred, ids)
        self.group.log_images(stage, batch_idx, panels, epoch)

    def flush(self) -> None:
        """Waits until everything queued so far has been handed to the loggers."""
        self._queue.join()

    def close(self, exit_code: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self.group.close(exit_code)
