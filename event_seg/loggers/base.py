"""The Logger interface and LoggerGroup, which fans out to every chosen logger.

A logger that raises is dropped with one warning and training goes on: losing a tracker must
never cost a run.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping

log = logging.getLogger(__name__)


class Logger:
    """What every tracker implements. ``epoch`` is the x-axis of everything logged."""

    name = "logger"

    def log_config(self, config: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], epoch: int) -> None:
        pass

    def log_images(self, stage: str, batch_idx: int, panels, epoch: int) -> None:
        """``panels`` is a :class:`event_seg.viz.Panels` (pictures plus per-sample masks)."""

    def log_step_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Curves within an epoch (``step/...`` names) against the global optimizer step."""

    def log_figure(self, tag: str, png: bytes, height: int, width: int, epoch: int) -> None:
        """One picture (PNG bytes) that is not a sample panel, e.g. a confusion matrix."""

    def log_table(self, name: str, columns: List[str], rows: List[list]) -> None:
        """A small table of the run's results (e.g. per-class IoU), kept with its summary."""

    def close(self, exit_code: int = 0) -> None:
        """``exit_code`` != 0: the run was interrupted (trackers may mark it failed)."""


class LoggerGroup(Logger):
    name = "group"

    def __init__(self, loggers: List[Logger]):
        self.loggers = list(loggers)

    def __len__(self) -> int:
        return len(self.loggers)

    def _each(self, method: str, *args) -> None:
        for logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as e:  # isolate tracker failures from training
                log.warning("Logger '%s' failed in %s (%s: %s); continuing without it",
                            logger.name, method, type(e).__name__, e)
                self.loggers.remove(logger)
                try:
                    logger.close()
                except Exception:
                    pass

    def log_config(self, config, meta) -> None:
        self._each("log_config", config, meta)

    def log_metrics(self, metrics, epoch) -> None:
        self._each("log_metrics", metrics, epoch)

    def log_images(self, stage, batch_idx, panels, epoch) -> None:
        self._each("log_images", stage, batch_idx, panels, epoch)

    def log_step_metrics(self, metrics, step) -> None:
        self._each("log_step_metrics", metrics, step)

    def log_figure(self, tag, png, height, width, epoch) -> None:
        self._each("log_figure", tag, png, height, width, epoch)

    def log_table(self, name, columns, rows) -> None:
        self._each("log_table", name, columns, rows)

    def close(self, exit_code: int = 0) -> None:
        for logger in self.loggers:
            try:
                logger.close(exit_code)
            except Exception as e:
                log.warning("Logger '%s' failed to close: %s", logger.name, e)


def build_loggers(logger_cfg, trial, start_epoch: int = 0, start_step: int = 0) -> LoggerGroup:
    """Instantiates each ``_target_`` entry of ``cfg.logger``; one that fails to start is skipped."""
    import time

    from hydra.utils import instantiate

    loggers: List[Logger] = []
    for key, node in (logger_cfg or {}).items():
        if node is None:
            continue
        started = time.perf_counter()
        try:
            loggers.append(instantiate(node, trial=trial, start_epoch=start_epoch,
                                       start_step=start_step))
        except Exception as e:
            cause = e.__cause__ or e
            message = " ".join(str(cause).split())[:300]  # one line, however chatty the library
            log.warning("Logger '%s' could not start after %.1f s (%s: %s); training continues "
                        "with the other loggers", key, time.perf_counter() - started,
                        type(cause).__name__, message)
    return LoggerGroup(loggers)


def flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
