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
from typing import Dict, Set

from ..errors import ConfigError

LOCK_NAME = ".lock"
_held: Dict[str, int] = {}  # resolved folder -> the open lock file of this process
_kept: Set[str] = set()  # resolved folders whose run has work to keep (see keep())


class FolderInUse(ConfigError):
    """Another live process holds the folder."""


def hold(folder: Path, remove_if_unused: bool = False,
         remove_unless_started: bool = False) -> None:
    """Locks ``folder`` for the rest of this process (a no-op when this process holds it).

    Raises :class:`FolderInUse` naming the holder when another process has it.
    ``remove_if_unused``: at exit, a folder that still holds nothing but the lock is removed (a
    command refused after the claim, e.g. by Hydra's argument parser, leaves no folder that
    ``trial_timestamp=latest`` would then take for the newest run).
    ``remove_unless_started``: a folder that held nothing when claimed is also emptied and
    removed at exit unless its run has work to keep (:func:`keep`): a run that failed before
    its first saved epoch (a dataset missing, a model that does not build, a loss that diverged
    in epoch 1) leaves no config.yaml that the corrected command would be held to, and nothing
    ``latest`` would resume. A folder that held a run before is never touched.
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held:
        return
    created = not folder.exists()  # only a folder made here is removed again (at exit, unused)
    fresh = created or is_unused(folder)  # nothing in it is anyone else's
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
    if remove_if_unused or remove_unless_started:
        atexit.register(_remove_if_unused, folder, created, fresh and remove_unless_started)


def keep(folder: Path) -> None:
    """The run in ``folder`` has work to keep (an epoch saved, a stop to resume, a finished run):
    its folder stays, whatever happens next."""
    _kept.add(str(Path(folder).resolve()))


def is_unused(folder: Path) -> bool:
    """True for a folder that holds nothing but (at most) its lock file: no run wrote there."""
    return all(p.name == LOCK_NAME for p in Path(folder).iterdir())


def _remove_if_unused(folder: Path, created: bool, unless_started: bool = False) -> None:
    """Takes back what the claim added: the lock file, and the folder if the claim made it;
    with ``unless_started``, also what a start that failed wrote there."""
    try:
        key = str(folder.resolve())
        if key not in _held:
            return
        if unless_started and key not in _kept:
            _empty(folder)
        elif not is_unused(folder):
            return
        (folder / LOCK_NAME).unlink()
        release(folder)
        if created:
            folder.rmdir()
    except OSError:
        pass  # someone else's lock file appeared meanwhile: theirs now


def _empty(folder: Path) -> None:
    """Removes everything in ``folder`` but its lock (which this process holds)."""
    import shutil

    for entry in Path(folder).iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
