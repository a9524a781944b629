"""Housekeeping of the prepared cache that needs no dataset: what killed prepares leave behind."""

from __future__ import annotations

import os
import subprocess
import sys

from event_seg.data.packed_cache import _process_tag, _remove_leftovers


def test_leftovers_of_killed_prepares_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    host = _process_tag().rpartition("-")[0]
    gone = tmp_path / f".Town05_val.tmp-{host}-{dead.pid}"
    old = tmp_path / f".Town05_val.old-{host}-{dead.pid}"
    live = tmp_path / f".Town05_val.tmp-{host}-{os.getpid()}"
    other_split = tmp_path / f".Town05_test.tmp-{host}-{dead.pid}"
    other_node = tmp_path / f".Town05_val.tmp-node17-{dead.pid}"  # a shared disk
    for folder in (gone, old, live, other_split, other_node):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "data-00000.bin").write_bytes(b"x" * 10)
    _remove_leftovers(tmp_path, "Town05_val")
    assert not gone.exists() and not old.exists()
    assert live.exists() and other_split.exists()  # a running prepare; another split's
    assert other_node.exists()  # another node's prepare: its pid means nothing here
