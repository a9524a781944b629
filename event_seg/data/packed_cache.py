"""The prepared cache: each split packed into a few large files, read by offset.

``event-seg-prepare`` reads every sample of a split once (in parallel workers) and appends its
decoded arrays to shard files (``data-00000.bin``, a new shard past ``SHARD_BYTES``): the RGB
frame and the mask as uint8 and, per sample, whichever is smaller, the window's raw events in
their compact dtypes or the event representation in float16 (a tensor the dataset ships dense,
DDD17's, is kept as shipped). ``index.json`` maps each sample id to its arrays (shard, byte
offset, dtype, shape) and to the identity of every file it was read from, taken before reading:
path relative to the dataset root, size, modification time, inode change time (ctime), inode
number and a content fingerprint (``fingerprint``).

Training maps the shards into memory and serves a sample from them only when every one of its
source files is still the same: a different size or modification time is a change; the same
inode with the same ctime is untouched (the kernel moves ctime on every write, ``utime`` and
rename, and no tool can set it back); otherwise (a file rewritten and its times set back, a copy
with ``cp -p``, ``rsync -a``, ``tar x``) the fingerprint decides, computed once per file and
process. A changed sample is read raw again. The folder is keyed by every setting that shapes
what is stored (format, root, label mapping, representation, bins, normalisation, the time
surface's decay constant, window settings); other
settings simply find no cache. A split is written into a temporary folder and renamed into
place whole, so a reader never sees half a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: each source file also carries its inode identity and a fingerprint
SHARD_BYTES = 2 ** 31  # 2 GiB per shard: few files, none unwieldy
EVENT_FIELDS = ("x", "y", "t", "p")
WHOLE_FILE_BYTES = 2 ** 20  # files up to this size are fingerprinted whole
BLOCK_BYTES = 2 ** 16  # larger ones by BLOCKS blocks of this size: 1 MiB read per file
BLOCKS = 16


def fingerprint(path) -> str:
    """A digest of the file's content: the whole file up to WHOLE_FILE_BYTES (PNG frames and
    labels, most event windows); beyond, its size and BLOCKS blocks of BLOCK_BYTES, the first,
    the last and the others evenly spaced between. A ``.npz`` is a zip whose last block holds
    its directory, with the CRC-32 of every array: any changed array changes that block."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(str(size).encode())
        if size <= WHOLE_FILE_BYTES:
            digest.update(f.read())
        else:
            last = size - BLOCK_BYTES
            for i in range(BLOCKS):
                f.seek(last * i // (BLOCKS - 1))
                digest.update(f.read(BLOCK_BYTES))
    return digest.hexdigest()


def _stat_key(path, st) -> tuple:
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def file_identity(path, root, memo: Optional[dict] = None) -> list:
    """[path relative to the dataset root, size, mtime_ns, ctime_ns, inode, fingerprint]:
    relative, so the same folder named another way (a relative root, a symlink) still matches;
    the cache folder itself is keyed by the resolved root. ``memo`` keeps the fingerprints of
    files already seen (DSEC's events.h5 serves every window of its sequence)."""
    st = os.stat(path)
    key = _stat_key(path, st)
    digest = memo.get(key) if memo is not None else None
    if digest is None:
        digest = fingerprint(path)
        if memo is not None:
            memo[key] = digest
    return [os.path.relpath(path, root), st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            st.st_ino, digest]


def cache_params(dataset_cfg, root: Path) -> dict:
    params = {"version": CACHE_VERSION, "format": dataset_cfg.format,
              "root": str(Path(root).resolve()),
              "label_map": None if dataset_cfg.label_map is None else list(dataset_cfg.label_map),
              "ignore_index": dataset_cfg.ignore_index,
              "representation": dataset_cfg.representation, "num_bins": dataset_cfg.num_bins,
              "normalize": dataset_cfg.normalize_events}
    if dataset_cfg.format == "dsec_semantic":
        dsec = dataset_cfg.dsec
        params.update(duration_ms=dsec.duration_ms, num_events=dsec.num_events,
                      rectify=dsec.rectify, classes=dsec.classes)
    if dataset_cfg.format == "ddd17":
        params["event_channels"] = dataset_cfg.event_channels
    if dataset_cfg.representation == "time_surface":
        # A dense entry holds the surface for this tau: another tau must not find it. Only
        # here, so that caches of the other representations keep their folder.
        params["tau_ms"] = float(dataset_cfg.time_surface.tau_ms)
    return params


class PackedCache:
    """The cache folder of one dataset configuration: ``<cache_dir>/packed/<settings hash>/``,
    one sub-folder per split folder (splits that share a folder share its cache)."""

    def __init__(self, cache_dir: str, dataset_cfg, root: Path):
        self.params = cache_params(dataset_cfg, root)
        blob = json.dumps(self.params, sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.dir = Path(os.path.expanduser(cache_dir)) / "packed" / digest
        self.split_folders = dict(dataset_cfg.splits)
        self.root = Path(root)
        # DSEC lists its sequences per split: val and test may share a folder, not a list.
        dsec = dataset_cfg.get("dsec") if dataset_cfg.format == "dsec_semantic" else None
        self.sequences = dict((dsec.sequences or {}) if dsec is not None else {})

    def split_dir(self, split: str) -> Path:
        folder = str(self.split_folders[split]).replace(os.sep, "__")
        sequences = self.sequences.get(split)
        if sequences is not None:
            listed = json.dumps(list(sequences))
            folder += "-" + hashlib.sha256(listed.encode()).hexdigest()[:8]
        return self.dir / folder

    def open_split(self, split: str) -> Optional["PackedSplit"]:
        path = self.split_dir(split)
        return PackedSplit(path, self.root) if (path / "index.json").is_file() else None

    def write_split(self, split: str, reader, num_workers: int = 0, progress: bool = True,
                    skip_corrupt: bool = False) -> dict:
        """Reads every sample of ``reader`` (a CompactReader without transform) and packs the
        split. Returns counts: samples, raw and dense event entries, skipped samples, bytes.
        With ``skip_corrupt`` an unreadable sample is left out (training then meets it raw and
        skips it there) instead of stopping."""
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        target = self.split_dir(split)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "params.json").write_text(json.dumps(self.params, indent=1, sort_keys=True))
        _remove_leftovers(self.dir, target.name)
        tmp = self.dir / f".{target.name}.tmp-{_process_tag()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        writer = _ShardWriter(tmp)
        entries = {}
        counts = {"samples": 0, "raw_events": 0, "dense_events": 0, "skipped": 0}
        tau = None
        if "tau_ms" in self.params:  # the surface in the unit of the reader's stamps
            from .events import tau_in_ticks

            tau = tau_in_ticks(self.params["tau_ms"], reader.time_unit)
        loader = DataLoader(_StoredForms(reader, self.root, skip_corrupt, tau), batch_size=None,
                            shuffle=False, num_workers=num_workers, collate_fn=_as_is)
        try:
            for sources, stored in tqdm(loader, total=len(reader), desc=f"prepare {split}",
                                        unit="sample", disable=not progress):
                if stored is None:  # unreadable, skip_corrupt: `sources` holds the reason
                    counts["skipped"] += 1
                    log.warning("Not packed (%d so far): %s", counts["skipped"], sources)
                    continue
                arrays = {name: writer.append(a) for name, a in stored["arrays"].items()}
                entries[stored["id"]] = {"sources": sources, "arrays": arrays,
                                         "kind": stored["kind"]}
                counts["samples"] += 1
                if stored["kind"] in ("raw_events", "dense_events"):
                    counts[stored["kind"]] += 1
            writer.close()
            index = {"params": self.params, "entries": entries}
            (tmp / "index.json").write_text(json.dumps(index, separators=(",", ":")))
            counts["bytes"] = writer.total
            # Swap the whole folder in: readers see the old cache or the new one, never half
            # (a reader that opened the old one keeps its files: they stay until it closes
            # them). Two prepares finishing at once take turns; the last one wins.
            old = self.dir / f".{target.name}.old-{_process_tag()}"
            with _lock(self.dir / f".{target.name}.lock"):
                if target.exists():
                    os.replace(target, old)
                os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return counts


class _lock:
    """An exclusive flock on ``path`` for the ``with`` block."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.file = open(self.path, "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.file.close()  # releases the lock


def _process_tag() -> str:
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def _remove_leftovers(folder: Path, name: str) -> None:
    """Temporary folders of prepares that were killed (SIGTERM from a scheduler, a crash):
    ``.<split>.tmp-<host>-<pid>`` / ``.old-...`` of this host whose process is gone (a cache on
    a shared disk: another node's prepare is never touched). Gigabytes on a real set."""
    host = _process_tag().rpartition("-")[0]
    for kind in ("tmp", "old"):
        for path in folder.glob(f".{name}.{kind}-{host}-*"):
            pid = path.name.rpartition("-")[2]
            if pid.isdigit():
                _remove_if_dead(path, int(pid))


def _remove_if_dead(path: Path, pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        shutil.rmtree(path, ignore_errors=True)
    except PermissionError:  # alive, another user's
        pass


def _as_is(item):  # a module-level function: picklable under spawn and forkserver too
    return item


class _StoredForms:
    """``[i] -> (source identities, what the cache stores for sample i)``, run in loader
    workers so that decoding and binning happen in parallel."""

    def __init__(self, reader, root: Path, skip_corrupt: bool = False, tau=None):
        self.reader = reader
        self.root = root
        self.skip_corrupt = skip_corrupt
        self.tau = tau  # the time surface's decay constant in the stamps' unit
        self.fingerprints = {}  # per worker process: each shared file is read once

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int):
        from ..errors import DatasetError

        reader = self.reader
        try:
            # Identities first: a file replaced while it is read then no longer matches.
            sources = [file_identity(p, self.root, self.fingerprints)
                       for p in reader.sources(index)]
            raw = reader.read(index)
        except (DatasetError, OSError) as e:
            if not self.skip_corrupt:
                raise DatasetError(str(e)) from None
            return str(e), None
        arrays = {"mask": raw["mask"]}
        if raw.get("rgb") is not None:
            arrays["rgb"] = raw["rgb"]
        kind = "none"
        if raw.get("dense") is not None:
            arrays["dense"], kind = raw["dense"], "shipped_dense"
        elif raw.get("events") is not None:
            events = raw["events"]
            height, width = raw["mask"].shape
            channels = _channels(reader)
            raw_bytes = sum(events[k].nbytes for k in EVENT_FIELDS)
            if _prefer_dense(raw_bytes, channels * height * width * 2):
                from .events import events_to_tensor

                tensor = events_to_tensor(events, reader.representation, reader.num_bins,
                                          height, width, normalize=reader.normalize_events,
                                          tau=self.tau)
                arrays["dense"], kind = tensor.astype(np.float16), "dense_events"
            else:
                arrays.update({f"events_{k}": events[k] for k in EVENT_FIELDS})
                kind = "raw_events"
        return sources, {"id": raw["id"], "arrays": arrays, "kind": kind}


def _prefer_dense(raw_bytes: int, dense_bytes: int) -> bool:
    return dense_bytes < raw_bytes


def _channels(reader) -> int:
    from .events import representation_channels

    return representation_channels(reader.representation, reader.num_bins)


class _ShardWriter:
    def __init__(self, folder: Path):
        self.folder = folder
        self.shard = -1
        self.file = None
        self.offset = 0
        self.total = 0

    def append(self, array: np.ndarray) -> list:
        array = np.ascontiguousarray(array)
        if self.file is None or self.offset + array.nbytes > SHARD_BYTES and self.offset:
            self.close()
            self.shard += 1
            self.file = open(self.folder / f"data-{self.shard:05d}.bin", "wb")
            self.offset = 0
        record = [self.shard, self.offset, array.dtype.str, list(array.shape)]
        self.file.write(array.tobytes())
        self.offset += array.nbytes
        self.total += array.nbytes
        return record

    def close(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None


class PackedSplit:
    """Read side of one packed split. Opened lazily in each process (DataLoader workers map the
    shards themselves); ``get(reader, index)`` returns the untransformed compact sample, or None
    when the cache does not hold it or one of its source files changed."""

    def __init__(self, folder: Path, root: Path):
        self.folder = Path(folder)
        self.root = Path(root)
        self._entries = None
        self._shards = {}
        self._verified = {}  # (path, stat) -> whether its content is the recorded one
        self.misses = 0

    def __getstate__(self):  # workers open their own maps
        return {"folder": self.folder, "root": self.root, "_entries": None, "_shards": {},
                "_verified": {}, "misses": 0}

    def _load(self) -> dict:
        """The index and every shard, mapped together once per process. Mapping them all at
        once keeps a consistent set: a prepare that swaps in a new folder later unlinks the old
        files, and the maps hold on to them. A damaged cache (unreadable index, a missing or
        truncated shard) is reported once and not used: samples are read raw."""
        if self._entries is None:
            try:
                for _ in range(3):  # a prepare may swap the folder between the two reads
                    stamp = os.stat(self.folder / "index.json").st_ino
                    with open(self.folder / "index.json") as f:
                        entries = json.load(f)["entries"]
                    shards = {}
                    for path in sorted(self.folder.glob("data-*.bin")):
                        shards[int(path.stem.split("-")[1])] = np.memmap(path, mode="r")
                    if os.stat(self.folder / "index.json").st_ino == stamp:
                        break
                self._check(entries, shards)
                self._entries, self._shards = entries, shards
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("Prepared cache %s is damaged (%s): reading samples from the raw "
                            "files; run event-seg-prepare again to rebuild it", self.folder,
                            " ".join(str(e).split())[:200])
                self._entries, self._shards = {}, {}
        return self._entries

    @staticmethod
    def _check(entries: dict, shards: dict) -> None:
        for entry in entries.values():
            for shard, offset, dtype, shape in entry["arrays"].values():
                end = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
                if shard not in shards or end > len(shards[shard]):
                    raise ValueError(f"shard data-{shard:05d}.bin is missing or shorter than "
                                     f"its index says")

    def _array(self, record) -> np.ndarray:
        shard, offset, dtype, shape = record
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        return np.frombuffer(self._shards[shard], dtype, count, offset).reshape(shape)

    def get(self, reader, index: int) -> Optional[dict]:
        entry = self._load().get(reader.sample_id(index))
        if entry is None or not self._fresh(entry["sources"], reader.sources(index)):
            if self._entries:  # a damaged cache said so once already
                self._miss(reader.sample_id(index))
            return None
        arrays = {name: self._array(record) for name, record in entry["arrays"].items()}
        sample = {"id": reader.sample_id(index), "rgb": arrays.get("rgb"),
                  "mask": arrays["mask"], "dense": arrays.get("dense")}
        if entry["kind"] == "raw_events":
            sample["events"] = {k: arrays[f"events_{k}"] for k in EVENT_FIELDS}
        return sample

    def _fresh(self, recorded, paths) -> bool:
        if len(recorded) != len(paths):
            return False
        for identity, now in zip(recorded, paths):
            if os.path.relpath(now, self.root) != identity[0]:
                return False
            if not self._same_file(now, identity):
                return False
        return True

    def _same_file(self, path, identity) -> bool:
        return _same_file(path, identity, self._verified) is True

    def scan(self, reader) -> dict:
        """What a training run will find, told once at start (build.log_packed_cache) from the
        index and one stat per source file, no content read: samples held, samples the reader
        has that the cache does not, files changed since (size or modification time, or gone),
        files to be checked by content (inode changed, times kept)."""
        with open(self.folder / "index.json") as f:
            entries = json.load(f)["entries"]
        ids = [reader.sample_id(i) for i in range(len(reader))]
        files, changed, recheck = {}, [], 0
        # Only the files of samples the reader still has: a sample left out since (its events
        # file deleted) is never asked for, and its files say nothing of the others.
        for entry in (entries[i] for i in ids if i in entries):
            for identity in entry["sources"]:
                files.setdefault(identity[0], identity)
        for rel, identity in files.items():
            same = _same_file(self.root / rel, identity, None, verify=False)
            if same is False:
                changed.append(rel)
            elif same is None:
                recheck += 1
        return {"held": sum(i in entries for i in ids), "samples": len(ids),
                "missing": sum(i not in entries for i in ids), "changed": sorted(changed),
                "recheck": recheck}

    def _miss(self, sample_id: str) -> None:
        self.misses += 1
        if self.misses == 1:
            log.warning("Prepared cache %s does not hold %s as it is now (a source file changed "
                        "or was added since event-seg-prepare): reading such samples from the "
                        "raw files; run event-seg-prepare again to refresh it",
                        self.folder, sample_id)


def _same_file(path, identity, verified: Optional[dict], verify: bool = True) -> Optional[bool]:
    """True: the file recorded as ``identity`` is untouched or has the recorded content;
    False: it changed or is gone; None (``verify=False`` only): to be told by its content."""
    size, mtime, ctime, inode, digest = identity[1:]
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_size != size or st.st_mtime_ns != mtime:
        return False
    if (st.st_ctime_ns, st.st_ino) == (ctime, inode):
        return True  # the same inode, never changed since (a change moves ctime)
    if not verify:
        return None
    key = _stat_key(path, st)
    if key not in verified:
        try:
            verified[key] = fingerprint(path) == digest
        except OSError:
            return False
    return verified[key]


# cache_params' keys as the settings a user passes
SETTING_NAMES = {"version": "cache version", "normalize": "dataset.normalize_events",
                 "tau_ms": "dataset.time_surface.tau_ms", "duration_ms": "dataset.dsec.duration_ms",
                 "num_events": "dataset.dsec.num_events", "rectify": "dataset.dsec.rectify",
                 "classes": "dataset.dsec.classes"}


def _differences(params: dict, other: dict) -> list:
    """``setting=other (now value)`` for each setting in which another cache of this dataset
    differs from these settings."""
    keys = sorted(set(params) | set(other))
    return [f"{SETTING_NAMES.get(k, 'dataset.' + k)}={other.get(k)} (now {params.get(k)})"
            for k in keys if params.get(k) != other.get(k)]


def describe(cache: "PackedCache", split: str, opened: Optional["PackedSplit"], reader) -> str:
    """What training finds in the prepared cache for one split: hit, rebuild needed or none,
    and why (build.log_packed_cache puts the splits on one line)."""
    where = cache.split_dir(split).name
    if opened is not None:
        try:
            found = opened.scan(reader)
        except (OSError, ValueError, KeyError, TypeError) as e:  # reported again when read
            return f"damaged ({where}: {' '.join(str(e).split())[:120]})"
        if not found["changed"] and not found["missing"]:
            check = (f", {found['recheck']} files copied or rewritten with their times kept, "
                     f"checked by content when read" if found["recheck"] else "")
            return f"hit ({where}, {found['held']} samples{check})"
        why = []
        if found["changed"]:
            why.append(f"{len(found['changed'])} source files changed since (size or "
                       f"modification time, or gone; first {found['changed'][0]})")
        if found["missing"]:
            why.append(f"{found['missing']} samples added since")
        return f"rebuild needed ({where}: {'; '.join(why)}; those samples are read raw)"
    if (cache.dir / "params.json").is_file():
        return f"none prepared ({where} is not in this cache)"
    others = []
    for params_file in sorted(cache.dir.parent.glob("*/params.json")):
        try:
            other = json.loads(params_file.read_text())
        except (OSError, ValueError):
            continue
        if other.get("root") == cache.params["root"]:
            others.append((len(_differences(cache.params, other)), params_file.parent, other))
    if not others:
        return f"none prepared for {cache.params['root']}"
    _, folder, other = min(others, key=lambda o: (o[0], str(o[1])))
    return (f"none for these settings (the closest, {folder}, was prepared with "
            f"{', '.join(_differences(cache.params, other))})")
