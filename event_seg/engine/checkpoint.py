"""Atomic checkpoint writes and safe loads (a checkpoint is data, never code)."""

from __future__ import annotations

import os
import pickle
import re
import random
import tempfile
from pathlib import Path

import numpy as np

from ..errors import CheckpointError  # noqa: F401  (re-exported)
from .crash import crash_point


def save_checkpoint(state: dict, path: Path) -> None:
    """Writes to a temp file in the same folder, fsyncs, then renames over ``path``.

    A crash at any moment leaves either the old or the new file, never a truncated one.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            crash_point("save", state.get("epoch"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# What evaluate, export and model.encoder_weights read from a checkpoint, with the scores and the
# settings that name it. Left out: the optimizer moments (two per weight with AdamW, so twice the
# model's size), the scheduler, the AMP scaler, the EMA's step count and the RNG states, which only
# a resume reads.
WEIGHTS_KEYS = ("model", "ema_model", "epoch", "global_step", "best_metric", "best_epoch",
                "val_bests", "config", "dataset_info", "trial")


def weights_only(state: dict) -> dict:
    """``state`` without what only a resume needs; marked so a resume can say why it cannot."""
    return {**{k: state[k] for k in WEIGHTS_KEYS if k in state}, "weights_only": True}


def is_weights_only(path: Path) -> bool:
    return bool(load_checkpoint(path, mmap=True).get("weights_only"))  # the tensors stay on disk


def saved_epoch(path: Path) -> int:
    return int(load_checkpoint(path, mmap=True).get("epoch", 0))


def trim_finished(folder: Path, keep: str) -> list:
    """Applies ``trainer.checkpoints.keep`` to the checkpoints/ folder of a finished run; returns
    what it changed (empty when nothing was left to do). Every step is atomic and the whole is
    idempotent, so a run killed part-way through (after metrics.json, which marks it finished)
    is trimmed by the next command that finds it finished, and a rerun with a smaller ``keep``
    trims a run kept whole. ``best.pt`` may hold the full state although ``keep`` is not
    ``all``: linked to ``last.pt`` by a part of the run made under ``keep=all``."""
    folder = Path(folder)
    changed = [f"removed {n} temp file(s)"] if remove_stale_temp_files(folder) else []
    last, best = folder / "last.pt", folder / "best.pt"
    if keep == "all" or not (last.is_file() or best.is_file()):
        return changed
    if best.is_file() and not is_weights_only(best):
        save_checkpoint(weights_only(load_checkpoint(best)), best)  # a new file: last.pt stays
        changed.append("best.pt slimmed")
    if not last.is_file():
        return changed
    if keep == "best" and best.is_file():
        last.unlink()
        return changed + ["last.pt removed"]
    if not is_weights_only(last):
        if best.is_file() and saved_epoch(best) == saved_epoch(last):
            link_checkpoint(best, last)  # the same epoch's weights: one file for both names
        else:
            save_checkpoint(weights_only(load_checkpoint(last)), last)
        changed.append("last.pt slimmed")
    return changed


def kept_line(folder: Path, keep: str) -> str:
    """The log line that says what a trimmed run's checkpoints/ holds now."""
    folder = Path(folder)
    files = [p for p in (folder / "last.pt", folder / "best.pt") if p.is_file()]
    epochs = {p.name: saved_epoch(p) for p in files}
    size = sum({p.stat().st_ino: p.stat().st_size for p in files}.values()) / 1e6  # links once
    if keep == "best" and list(epochs) == ["best.pt"]:
        return (f"Checkpoints: kept {folder / 'best.pt'} (weights only, epoch {epochs['best.pt']}, "
                f"{size:.1f} MB); last.pt removed (trainer.checkpoints.keep=best)")
    held = " and ".join(f"{name} (epoch {epoch})" for name, epoch in epochs.items())
    return (f"Checkpoints: {held} keep the weights only, {size:.1f} MB "
            f"(trainer.checkpoints.keep={keep})")


def remove_stale_temp_files(folder: Path) -> int:
    """Deletes the temp files a killed save or link left behind; returns how many."""
    removed = 0
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def link_checkpoint(source: Path, target: Path) -> None:
    """Makes ``target`` the same file as ``source`` without copying (a hard link, swapped in
    atomically). The next save of ``source`` writes a new file, so ``target`` keeps these bytes.
    Falls back to a copy where hard links are not supported."""
    import shutil

    tmp = target.with_name(f".{target.name}.link.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def load_checkpoint(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """Loads a checkpoint as data; ``mmap`` leaves the tensors on disk until touched (for reading
    the config and epoch alone)."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint={path} is a folder; pass a .pt file in it") from None
    except pickle.UnpicklingError as e:
        if _blocked_code(str(e)):
            raise CheckpointError(
                f"refused to load {path}: it holds pickled Python objects beyond tensors and "
                f"plain data, which can run code when loaded; event_seg checkpoints never "
                f"contain any, so this file was not written by event_seg or was tampered with"
            ) from None
        raise CheckpointError(_corrupt(path)) from None
    except Exception:
        # EOFError, zip reader RuntimeErrors, KeyErrors on garbage opcodes: all mean the bytes
        # are not a whole checkpoint. The library's wording helps nobody here.
        raise CheckpointError(_corrupt(path)) from None


def _blocked_code(message: str) -> bool:
    """The safe unpickler names a blocked GLOBAL (a function or class to import) when a file
    carries code; garbage bytes fail on an "Unsupported operand" instead."""
    return bool(re.search(r"GLOBAL|[Uu]nsupported global|REDUCE", message))


def _corrupt(path: Path) -> str:
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    return (f"cannot load checkpoint {path} ({size} bytes): the file is corrupt or truncated "
            f"(an interrupted copy or download?). Runs write last.pt and best.pt atomically, "
            f"so a copy from the run folder is intact")


def rng_state() -> dict:
    """Every RNG the run draws from, in types ``weights_only`` loading accepts."""
    import torch

    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_checkpoint(path: Path) -> Path:
    """A .pt file as given; for a folder (a run folder or its checkpoints/), best.pt or last.pt."""
    path = Path(path).expanduser()
    if not path.exists():  # said before torch is imported: a typo costs no wait
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(2)
        # torch.save writes a zip archive (or, before torch 1.6, a pickle): anything else is
        # another kind of file, say the exported model itself, not a damaged checkpoint.
        if head and head != b"PK" and head[:1] != b"\x80":
            raise CheckpointError(f"checkpoint={path} is not a PyTorch checkpoint; pass "
                                  f"checkpoints/best.pt or last.pt of a run, or the run folder")
    if not path.is_dir():
        return path  # load_checkpoint names an unreadable one
    for name in ("best.pt", "last.pt"):
        for folder in (path / "checkpoints", path):
            if (folder / name).is_file():
                return folder / name
    raise CheckpointError(f"checkpoint={path} is a folder without checkpoints/best.pt or "
                          f"last.pt; pass a run folder or a .pt file")
