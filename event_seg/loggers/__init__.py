"""Experiment trackers behind one small interface (see base.py)."""

from .base import Logger, LoggerGroup, build_loggers  # noqa: F401
