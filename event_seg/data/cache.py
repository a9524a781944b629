"""The representation cache that ``event-seg-prepare`` fills: one ``.npy`` event tensor per sample.

The folder is keyed by everything that shapes a tensor (format, root, representation, bins,
normalisation and the reader's window settings), and each entry by its source file's path, size
and modification time (plus the label time for windowed readers). Changing a parameter or a
file therefore misses the cache instead of serving a stale tensor. Training reads entries that
exist and computes the rest from raw events, which gives the same tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np


def _digest(text: str, n: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def file_identity(path: Path) -> str:
    st = os.stat(path)
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


class RepresentationCache:
    def __init__(self, cache_dir: str, params: dict, writable: bool = False):
        blob = json.dumps(params, sort_keys=True, default=str)
        self.dir = Path(os.path.expanduser(cache_dir)) / "representations" / _digest(blob)
        self.params = params
        self.writable = writable

    def path(self, source: str) -> Path:
        return self.dir / f"{_digest(source, 24)}.npy"

    def load(self, source: str) -> Optional[np.ndarray]:
        path = self.path(source)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except Exception:  # a damaged entry is recomputed, never trusted
            return None

    def store(self, source: str, tensor: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        params_file = self.dir / "params.json"
        if not params_file.exists():
            params_file.write_text(json.dumps(self.params, indent=1, sort_keys=True, default=str))
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(tensor, dtype=np.float32))
        os.replace(tmp, self.path(source))  # readers never see half an entry
