"""One process per run folder: a run holds an exclusive lock on ``<folder>/.lock`` while it lives.

Why a lock and not a "running" marker file: the kernel drops an ``flock`` when its process dies,
SIGKILL and power loss included, so a crashed run never leaves its folder locked, while two live
runs (two commands started in the same second, a resume typed while the run still trains, a
second torchrun job on the same trial) can never write into the same folder.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import socket
from pathlib import Path
from typing import Dict

from ..errors import ConfigError

LOCK_NAME = ".lock"
_held: Dict[str, int] = {}  # resolved folder -> the open lock file of this process


class FolderInUse(ConfigError):
    """Another live process holds the folder."""


def hold(folder: Path, remove_if_unused: bool = False) -> None:
    """Locks ``folder`` for the rest of this process (a no-op when this process holds it).

    Raises :class:`FolderInUse` naming the holder when another process has it.
    ``remove_if_unused``: at exit, a folder that still holds nothing but the lock is removed (a
    command refused after the claim, e.g. by Hydra's argument parser, leaves no folder that
    ``trial_timestamp=latest`` would then take for the newest run).
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held:
        return
    created = not folder.exists()  # only a folder made here is removed again (at exit, unused)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise FolderInUse(f"{folder} is in use by a run that is still going ({holder}); wait "
                          f"for it to end or stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[key] = fd
    if remove_if_unused:
        atexit.register(_remove_if_unused, folder, created)


def is_unused(folder: Path) -> bool:
    """True for a folder that holds nothing but (at most) its lock file: no run wrote there."""
    return all(p.name == LOCK_NAME for p in Path(folder).iterdir())


def _remove_if_unused(folder: Path, created: bool) -> None:
    """Takes back what the claim added: the lock file, and the folder if the claim made it."""
    try:
        if str(folder.resolve()) not in _held or not is_unused(folder):
            return
        (folder / LOCK_NAME).unlink()
        release(folder)
        if created:
            folder.rmdir()
    except OSError:
        pass  # someone else's lock file appeared meanwhile: theirs now


def is_held_elsewhere(folder: Path) -> bool:
    """True when a live process other than this one holds ``folder``."""
    folder = Path(folder)
    if str(folder.resolve()) in _held or not (folder / LOCK_NAME).is_file():
        return False
    fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock at once
    return False


def release(folder: Path) -> None:
    fd = _held.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)
