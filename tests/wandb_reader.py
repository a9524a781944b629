"""Reads an offline W&B run back from its ``run-<id>.wandb`` file (format in TRACKING.md).

A 7-byte header (``:W&B``, uint16 0xBEE1 little-endian, version 0), then 32 KiB blocks of records
``crc32 u32 | length u16 | type u8 | payload`` (FULL=1, FIRST=2, MIDDLE=3, LAST=4); a block tail
shorter than 7 bytes is zero padding. Each payload is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    magic, version = struct.unpack("<HB", data[4:7])
    assert magic == 0xBEE1 and version == 0
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < 7:  # zero padding at the end of a block
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            chunks = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            chunks, pending = pending + payload, b""
        else:
            raise ValueError(f"bad record type {kind} at {pos}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunks)
        yield record


@dataclass
class OfflineRun:
    run_id: str = ""
    group: str = ""
    history: list = field(default_factory=list)   # one dict per run.log call
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None

    def series(self, key: str) -> list:
        return [(row.get("epoch"), row[key]) for row in self.history if key in row]


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(run_dir: Path) -> OfflineRun:
    """``run_dir`` is an ``offline-run-*`` folder (or a folder holding exactly one)."""
    run_dir = Path(run_dir)
    files = list(run_dir.glob("run-*.wandb")) or list(run_dir.glob("*/run-*.wandb"))
    assert len(files) == 1, f"expected one run file under {run_dir}, found {files}"
    run = OfflineRun()
    for record in read_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id = record.run.run_id
            run.group = record.run.run_group
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run
