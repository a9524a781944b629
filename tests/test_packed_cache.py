"""The prepared cache: what killed prepares leave behind, a changed file that keeps its size and
times, and the line training logs about the cache."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


# --- the prepared cache of a small EventScape-layout set -------------------------------------

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train": "Town01-03_train", "val": "Town05_val", "test": "Town05_test"}
PARAMS = dict(height=32, width=64, seed=5, train_sequences=1, val_sequences=1, test_sequences=1,
              frames_per_sequence=3, subframes=3, frame_rate=10.0, contrast_threshold=0.25,
              threshold_sigma=0.03, noise_rate=0.05, hard_fraction=0.4)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    from event_seg.data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("es"), PARAMS, SPLITS, progress=False)


def _dataset_cfg(root, **extra):
    from omegaconf import OmegaConf

    from event_seg.config import DatasetConfig

    return OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                           OmegaConf.load(REPO / "conf" / "dataset" / "event_scapes.yaml"),
                           {"root": str(root), "height": 32, "width": 64, **extra})


def _reader(root, cache, split="val", **extra):
    """The split's reader as training builds it (build_data), with its prepared cache."""
    from omegaconf import OmegaConf

    from event_seg.config import TrainerConfig
    from event_seg.data import build_data

    trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"num_workers": 0})
    data = build_data(_dataset_cfg(root, **extra), trainer, str(cache), splits=(split,))
    return data.loaders[split].dataset.dataset


def _prepare(root, cache, *extra):
    from event_seg.prepare import main as prepare_main

    assert prepare_main(["dataset=event_scapes", f"dataset.root={root}", "dataset.height=32",
                         "dataset.width=64", f"paths.cache_dir={cache}", "trainer.num_workers=0",
                         "trainer.progress_bar=false", *extra]) == 0


def _rewrite_keeping_times(path, **arrays):
    """Rewrites an events.npz and sets its times back, as `cp -p`, `rsync -a` or `tar x` leave
    a changed file: same size, same modification time."""
    st = os.stat(path)
    np.savez(path, **arrays)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_a_rewritten_file_with_its_size_and_times_kept_is_not_served_from_the_cache(
        small_root, tmp_path):
    root = tmp_path / "EventScape"
    shutil.copytree(small_root, root)
    cache = tmp_path / "cache"
    _prepare(root, cache)
    reader = _reader(root, cache)
    assert all(reader.cache.get(reader, i) is not None for i in range(len(reader)))
    victim_index = 0
    before = reader[victim_index]["events"]["p"].copy()  # polarity as +-1
    victim = Path(reader.sources(victim_index)[2])
    assert victim.name.endswith("_events.npz")
    with np.load(victim) as f:
        events = {k: f[k] for k in "xytp"}
    _rewrite_keeping_times(victim, **{**events, "p": ~events["p"]})

    reader = _reader(root, cache)
    assert reader.cache.get(reader, victim_index) is None  # not the stale entry: read raw
    assert np.array_equal(reader[victim_index]["events"]["p"], -before)
    # A file copied with its times kept (a new inode) and unchanged content is still served.
    other = Path(reader.sources(1)[2])
    shutil.copy2(other, other.with_suffix(".tmp"))
    os.replace(other.with_suffix(".tmp"), other)
    assert reader.cache.get(reader, 1) is not None


def test_training_logs_one_line_naming_the_cache_hit_or_why_not(small_root, tmp_path, caplog):
    root = tmp_path / "EventScape"
    shutil.copytree(small_root, root)
    cache = tmp_path / "cache"

    def cache_lines(**extra):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="event_seg.data.build"):
            _reader(root, cache, **extra)
        lines = [r.getMessage() for r in caplog.records if "Prepared cache" in r.getMessage()]
        assert len(lines) == 1, lines
        return lines[0]

    line = cache_lines()
    assert "val none prepared for" in line and str(root.resolve()) in line
    _prepare(root, cache)
    line = cache_lines()
    assert f"val hit ({SPLITS['val']}, 2 samples)" in line
    assert str(next((cache / "packed").iterdir())) in line
    # Another setting: no cache for it, and the one that exists differs in num_bins.
    line = cache_lines(num_bins=3)
    assert "val none for these settings" in line and "num_bins=5 (now 3)" in line
    assert "run event-seg-prepare" in line
    # A source file changed since prepare: named, rebuild needed.
    label = sorted((root / SPLITS["val"]).rglob("*.png"))[-1]
    os.utime(label, ns=(0, 10 ** 9))
    line = cache_lines()
    assert "val rebuild needed" in line and str(label.relative_to(root)) in line


def test_a_sample_removed_since_prepare_leaves_the_others_a_hit(small_root, tmp_path, caplog):
    """A frame whose events file was deleted is left out of the split: the log line must not
    call for a rebuild because of it, while every sample training reads is served."""
    root = tmp_path / "EventScape"
    shutil.copytree(small_root, root)
    cache = tmp_path / "cache"
    _prepare(root, cache)
    sorted((root / SPLITS["val"]).rglob("*_events.npz"))[0].unlink()
    with caplog.at_level(logging.INFO, logger="event_seg.data.build"):
        reader = _reader(root, cache)
    line = next(r.getMessage() for r in caplog.records if "Prepared cache" in r.getMessage())
    assert all(reader.cache.get(reader, i) is not None for i in range(len(reader)))
    assert f"val hit ({SPLITS['val']}, 1 samples)" in line, line
    assert "rebuild" not in line and "event-seg-prepare" not in line, line
