"""The time surface and the mixed-density event stack (recency.py): the batched torch functions
equal the numpy references sample by sample; hand-computed windows; the time unit carried from
the reader to the device; the prepared cache keyed by tau; a CLI run on each channel count."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from event_seg.data.events import (compact_events, events_to_tensor, events_to_tensor_batch,
                                   representation_channels, tau_in_ticks)
from event_seg.data.recency import mdes, mdes_batch, time_surface, time_surface_batch
from event_seg.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
H, W, BINS = 12, 20, 5
# 50 ms windows in each unit: epoch-sized stamps, as the releases store them.
UNITS = {"ns": (1_600_000_000_000_000_000, 50_000_000), "us": (1_500_000_000_000, 50_000)}


def _window(rng, n, t_start, t_span, polarity="bool", dtype=np.int64):
    x, y = rng.integers(0, W, n), rng.integers(0, H, n)
    t = (t_start + rng.integers(0, t_span + 1, n)).astype(dtype)
    p = rng.integers(0, 2, n)
    p = {"bool": p.astype(bool), "01": p.astype(np.uint8),
         "pm1": (2 * p - 1).astype(np.int8)}[polarity]
    return x, y, t, p


def _cases(unit):
    """Random windows, one event, an empty sample inside the batch, all-equal stamps, every
    polarity encoding, a busy window (many events per pixel)."""
    start, span = UNITS[unit]
    rng = np.random.default_rng(0 if unit == "ns" else 1)
    return [
        _window(rng, 400, start, span),
        _window(rng, 1, start, span),
        _window(rng, 0, start, span),
        (*_window(rng, 30, start, span)[:2], np.full(30, start + 7, np.int64),
         rng.integers(0, 2, 30)),
        _window(rng, 300, start, span, polarity="01"),
        _window(rng, 2000, start, span, polarity="pm1"),
    ]


def _pack(windows, device, compact=False):
    """The flat batch the device builder gets: raw stamps, or the readers' compact offsets."""
    parts = {k: [] for k in "xytpb"}
    for i, (x, y, t, p) in enumerate(windows):
        if compact:
            c = compact_events(x, y, t, p, H, W, "test")
            x, y, t, p = c["x"], c["y"], c["t"], c["p"]
        for k, a in zip("xytp", (x, y, t, p)):
            parts[k].append(np.asarray(a))
        parts["b"].append(np.full(len(x), i))
    return [torch.from_numpy(np.concatenate(parts[k]).astype(np.result_type(*parts[k])))
            .to(device) for k in "xytpb"]


# ---------------------------------------------------------------------------------------------
# Batched equals numpy, sample by sample
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("compact", [False, True], ids=["raw_stamps", "compact_offsets"])
def test_time_surface_batch_equals_numpy_per_sample(device, unit, compact):
    windows = _cases(unit)
    tau = tau_in_ticks(20.0, unit)  # a 50 ms window spans 2.5 tau: values from 0.08 to 1
    x, y, t, p, b = _pack(windows, device, compact)
    before = [a.clone() for a in (x, y, t, p, b)]
    surface = time_surface_batch(x, y, t, p, b, len(windows), tau, H, W)
    assert all(torch.equal(a, c) for a, c in zip(before, (x, y, t, p, b)))  # inputs untouched
    assert surface.shape == (len(windows), 2, H, W) and surface.dtype == torch.float32
    assert surface.device.type == device
    for i, (wx, wy, wt, wp) in enumerate(windows):
        expected = time_surface(wx, wy, wt, wp, tau, H, W)
        np.testing.assert_allclose(surface[i].cpu().numpy(), expected, rtol=1e-5, atol=0,
                                   err_msg=f"sample {i}")
    assert not surface[2].any()  # the empty sample
    assert surface[1].max() == 1 and (surface[1] > 0).sum() == 1  # one event, at the end
    assert set(surface[3][surface[3] > 0].tolist()) == {1.0}  # all-equal stamps: all at the end
    assert 0.05 < surface[0][surface[0] > 0].min() < 0.2 and surface[0].max() == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("unit", list(UNITS))
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("compact", [False, True], ids=["raw_stamps", "compact_offsets"])
def test_mdes_batch_equals_numpy_per_sample(device, unit, normalize, compact):
    windows = _cases(unit)
    x, y, t, p, b = _pack(windows, device, compact)
    stack = mdes_batch(x, y, t, p, b, len(windows), BINS, H, W, normalize=normalize)
    assert stack.shape == (len(windows), BINS, H, W) and stack.dtype == torch.float32
    assert stack.device.type == device
    for i, (wx, wy, wt, wp) in enumerate(windows):
        expected = mdes(wx, wy, wt, wp, BINS, H, W, normalize=normalize)
        if normalize:
            np.testing.assert_allclose(stack[i].cpu().numpy(), expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"sample {i}")
        else:  # integer counts: exactly equal
            np.testing.assert_array_equal(stack[i].cpu().numpy(), expected, f"sample {i}")
    assert not stack[2].any()  # the empty sample
    # All-equal stamps: every event is at the window's end, so every channel holds them all.
    assert all(torch.equal(stack[3, k], stack[3, 0]) for k in range(BINS)) and stack[3].any()
    if not normalize:
        net = torch.from_numpy(np.where(np.asarray(windows[0][3]) > 0, 1.0, -1.0)).sum()
        assert stack[0, 0].sum() == net  # channel 0: the whole window's net polarity


def test_float32_offsets_and_the_dispatchers_agree():
    """Float stamps (compact_events keeps them float32) and the events_to_tensor(_batch) entry
    points: the same numbers as the functions they dispatch to."""
    rng = np.random.default_rng(5)
    windows = [_window(rng, 200, 0, 50_000), _window(rng, 50, 0, 10_000)]
    windows = [(x, y, (t * 1e-6).astype(np.float32), p) for x, y, t, p in windows]  # seconds
    x, y, t, p, b = _pack(windows, "cpu", compact=True)
    assert t.dtype == torch.float32
    packed = {"x": x, "y": y, "t": t, "p": p, "batch_index": b}
    tau = tau_in_ticks(20.0, "s")
    for representation in ("time_surface", "mdes"):
        batch = events_to_tensor_batch(packed, 2, representation, BINS, H, W, normalize=True,
                                       tau=tau)
        assert batch.shape[1] == representation_channels(representation, BINS)
        for i, (wx, wy, wt, wp) in enumerate(windows):
            c = compact_events(wx, wy, wt, wp, H, W, "test")
            expected = events_to_tensor(c, representation, BINS, H, W, normalize=True, tau=tau)
            np.testing.assert_allclose(batch[i].numpy(), expected, rtol=1e-5, atol=1e-6)
    # normalize_events leaves the time surface as it is: already in [0, 1], 0 = no event.
    c = compact_events(*windows[0], H, W, "test")
    assert np.array_equal(events_to_tensor(c, "time_surface", BINS, H, W, True, tau),
                          events_to_tensor(c, "time_surface", BINS, H, W, False, tau))


# ---------------------------------------------------------------------------------------------
# Hand-computed windows
# ---------------------------------------------------------------------------------------------

def _events(rows):
    """(x, y, t, p) arrays from (x, y, t, p) rows."""
    x, y, t, p = (np.array(c) for c in zip(*rows))
    return x, y, t.astype(np.int64), p.astype(np.int8)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_time_surface_by_hand(backend):
    # Pixel (1, 0): two positive events, at 10 and 30 ms; the window ends at 50 ms with a
    # negative event at (2, 1). Pixel (0, 0) has one event of each polarity. Stamps in us.
    rows = [(1, 0, 10_000, 1), (1, 0, 30_000, 1), (0, 0, 20_000, 1), (0, 0, 40_000, -1),
            (2, 1, 50_000, -1)]
    tau = tau_in_ticks(20.0, "us")
    assert tau == pytest.approx(20_000, rel=1e-12)
    if backend == "numpy":
        surface = time_surface(*_events(rows), tau, 2, 3)
    else:
        x, y, t, p = (torch.from_numpy(a) for a in _events(rows))
        surface = time_surface_batch(x, y, t, p, torch.zeros(5, dtype=torch.long), 1, tau, 2,
                                     3)[0].numpy()
    expected = np.zeros((2, 2, 3), np.float32)
    expected[1, 0, 1] = math.exp(-20 / 20)  # the later of the two events: 20 ms before the end
    expected[1, 0, 0] = math.exp(-30 / 20)
    expected[0, 0, 0] = math.exp(-10 / 20)  # polarities are kept apart
    expected[0, 1, 2] = 1.0                 # the window's last event
    np.testing.assert_allclose(surface, expected, rtol=1e-6, atol=0)


def test_time_surface_keeps_the_latest_event_whatever_the_order():
    rows = [(1, 0, 30_000, 1), (1, 0, 10_000, 1), (0, 1, 50_000, 1)]
    surface = time_surface(*_events(rows), 20_000.0, 2, 3)
    assert surface[1, 0, 1] == np.float32(math.exp(-1.0))


def test_the_same_window_in_ns_and_us_gives_the_same_time_surface():
    """tau_ms reaches each dataset in its own unit: one window, stamped in ns and in us."""
    rng = np.random.default_rng(2)
    x, y, t_ns, p = _window(rng, 500, UNITS["ns"][0], UNITS["ns"][1])
    t_ns -= t_ns % 1000  # whole microseconds, so both stampings hold the same instants
    in_ns = time_surface(x, y, t_ns, p, tau_in_ticks(10.0, "ns"), H, W)
    in_us = time_surface(x, y, t_ns // 1000, p, tau_in_ticks(10.0, "us"), H, W)
    np.testing.assert_allclose(in_ns, in_us, rtol=1e-6)
    assert (in_ns > 0).sum() > 100


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_mdes_by_hand(backend):
    # One positive event per pixel along a row, 4 channels, window [0, 100]: ages (from the
    # window's end) 1.0, 0.9, 0.4, 0.2 and 0. Channel k holds the events of age < 1/2^k: the last
    # half, quarter, eighth of the window; channel 0 holds them all. Pixel 5 has a positive and
    # a negative event in the last eighth (they cancel there) and one more negative event in
    # the last half only. Pixel 6 has an event at age exactly 1/2: not in the last half (the
    # intervals are (t_end - span / 2^k, t_end]).
    rows = [(0, 0, 0, 1), (1, 0, 10, 1), (2, 0, 60, 1), (3, 0, 80, 1), (4, 0, 100, 1),
            (5, 0, 55, -1), (5, 0, 90, 1), (5, 0, 95, -1), (6, 0, 50, 1)]
    if backend == "numpy":
        stack = mdes(*_events(rows), 4, 1, 7)
    else:
        x, y, t, p = (torch.from_numpy(a) for a in _events(rows))
        stack = mdes_batch(x, y, t, p, torch.zeros(len(rows), dtype=torch.long), 1, 4, 1,
                           7)[0].numpy()
    expected = np.array([[1, 1, 1, 1, 1, -1, 1],   # the whole window
                         [0, 0, 1, 1, 1, -1, 0],   # its last half: ages < 1/2
                         [0, 0, 0, 1, 1, 0, 0],    # last quarter
                         [0, 0, 0, 0, 1, 0, 0]],   # last eighth
                        np.float32)[:, None, :]
    np.testing.assert_array_equal(stack, expected)


def test_mdes_of_one_event_and_one_channel():
    one = _events([(1, 0, 123, -1)])
    assert np.array_equal(mdes(*one, 3, 1, 2)[:, 0], [[0, -1]] * 3)  # at the end: everywhere
    rows = _events([(0, 0, 0, 1), (0, 0, 10, 1), (1, 0, 5, -1)])
    assert np.array_equal(mdes(*rows, 1, 1, 2)[0, 0], [2, -1])  # one channel: the net counts


# ---------------------------------------------------------------------------------------------
# Config, channels, time unit
# ---------------------------------------------------------------------------------------------

def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("representation,modality,channels", [
    ("time_surface", "events", 2), ("time_surface", "rgb+events", 5),
    ("mdes", "events", 4), ("mdes", "rgb+events", 7)])
def test_representations_are_accepted_and_channels_follow(representation, modality, channels):
    from event_seg.config import validate
    from event_seg.data.build import event_channels, input_channels

    cfg = _compose(f"dataset.representation={representation}", f"dataset.modality={modality}",
                   "dataset.num_bins=4")
    validate(cfg)
    assert input_channels(modality, event_channels(cfg.dataset)) == channels
    assert cfg.dataset.time_surface.tau_ms == 50.0


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_a_non_positive_tau_is_one_line_naming_the_key(value):
    from event_seg.config import validate

    with pytest.raises(ConfigError, match=r"^dataset\.time_surface\.tau_ms=.* must be positive"):
        validate(_compose("dataset.representation=time_surface",
                          f"dataset.time_surface.tau_ms={value}"))


def test_tau_needs_a_known_time_unit():
    assert tau_in_ticks(50.0, "ns") == pytest.approx(5e7, rel=1e-12)
    assert tau_in_ticks(50.0, "us") == pytest.approx(5e4, rel=1e-12)
    with pytest.raises(DatasetError, match="unit of the event timestamps"):
        tau_in_ticks(50.0, None)
    with pytest.raises(ConfigError, match="tau_ms"):
        tau_in_ticks(0.0, "us")


def test_dsec_reports_microseconds():
    from event_seg.data.dsec import DsecSemanticDataset

    assert DsecSemanticDataset.time_unit == "us"


def test_time_surface_panel_colours_the_latest_polarity_by_recency():
    from event_seg.viz import event_frame

    surface = np.zeros((2, 1, 3), np.float32)
    surface[1, 0, 0], surface[0, 0, 1], surface[1, 0, 1] = 1.0, 0.5, 0.2
    img = event_frame(surface, "time_surface")
    assert img.shape == (1, 3, 3) and img.dtype == np.uint8
    assert img[0, 0, 0] > img[0, 0, 2] and img[0, 1, 2] > img[0, 1, 0]  # red; then blue
    assert (img[0, 2] == 255).all() and img[0, 1].min() > img[0, 0].min()  # empty; weaker
    assert event_frame(np.zeros((4, 1, 3), np.float32), "mdes").min() == 255


# ---------------------------------------------------------------------------------------------
# Through the readers: the unit each detects, the device builder, the prepared cache
# ---------------------------------------------------------------------------------------------

SPLITS = {"train": "Town01-03_train", "val": "Town05_val", "test": "Town05_test"}
PARAMS = dict(height=32, width=64, seed=4, train_sequences=1, val_sequences=1, test_sequences=1,
              frames_per_sequence=3, subframes=2, frame_rate=10.0, contrast_threshold=0.25,
              threshold_sigma=0.03, noise_rate=0.05, hard_fraction=0.4)


@pytest.fixture(scope="module")
def stamped_roots(tmp_path_factory):
    """One synthetic set (nanoseconds, the simulator's unit) and a copy stamped in whole
    microseconds, as another release might store it."""
    from event_seg.data.synthetic import ensure_synthetic

    ns_root = ensure_synthetic(tmp_path_factory.mktemp("synthetic"), PARAMS, SPLITS,
                               progress=False)
    us_root = tmp_path_factory.mktemp("release") / "EventScape"
    shutil.copytree(ns_root, us_root)
    for ns_file, us_file in zip(sorted(ns_root.rglob("*_events.npz")),
                                sorted(us_root.rglob("*_events.npz"))):
        with np.load(ns_file) as f:
            ev = {k: f[k] for k in "xytp"}
        ev["t"] -= ev["t"] % 1000  # the same instants in both: whole microseconds
        np.savez(ns_file, **ev)
        np.savez(us_file, **{**ev, "t": ev["t"] // 1000})
    return {"ns": ns_root, "us": us_root}


def _dataset_cfg(root, **extra):
    from omegaconf import OmegaConf

    from event_seg.config import DatasetConfig

    return OmegaConf.merge(OmegaConf.structured(DatasetConfig),
                           OmegaConf.load(REPO / "conf" / "dataset" / "event_scapes.yaml"),
                           {"root": str(root), "height": 32, "width": 64,
                            "modality": "events", "augment": {"hflip": 0.0}, **extra})


def _inputs(cfg, cache_dir, split="val"):
    """Built as training builds them: the DatasetInfo of build_data, the device builder."""
    from omegaconf import OmegaConf

    from event_seg.config import TrainerConfig
    from event_seg.data import build_data
    from event_seg.data.collate import collate_compact
    from event_seg.data.device_input import ModelInputBuilder

    trainer = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"num_workers": 0})
    data = build_data(cfg, trainer, str(cache_dir), splits=(split,))
    dataset = data.loaders[split].dataset
    builder = ModelInputBuilder(data.info, "cpu", normalize_events=cfg.normalize_events)
    samples = [dataset[(i, 1)] for i in range(len(dataset))]
    return data.info, samples, builder(collate_compact(samples)).inputs


def test_the_reader_unit_reaches_the_device_builder(stamped_roots, tmp_path):
    """The same windows stamped in ns and in us give the same time surface, and it is the
    numpy reference's with tau in that unit; the MDES, unit-free, is the same in both too."""
    from event_seg.data.sample import sample_event_tensor

    built = {}
    for unit, root in stamped_roots.items():
        cfg = _dataset_cfg(root, representation="time_surface", representation_cache=False,
                           time_surface={"tau_ms": 30.0})
        info, samples, inputs = _inputs(cfg, tmp_path)
        assert info.time_unit == unit and info.time_surface_tau_ms == 30.0
        assert inputs.shape[1] == 2 and inputs.max() == 1 and (inputs > 0).sum() > 50
        tau = tau_in_ticks(30.0, unit)
        for sample, got in zip(samples, inputs):
            expected = sample_event_tensor(sample, "time_surface", 5, tau=tau)
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=0)
        built[unit] = inputs
        cfg = _dataset_cfg(root, representation="mdes", num_bins=4, representation_cache=False)
        _, samples, inputs = _inputs(cfg, tmp_path)
        assert inputs.shape[1] == 4
        for sample, got in zip(samples, inputs):
            expected = sample_event_tensor(sample, "mdes", 4, normalize=True)
            np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
        built[f"mdes_{unit}"] = inputs
    torch.testing.assert_close(built["ns"], built["us"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(built["mdes_ns"], built["mdes_us"], rtol=1e-5, atol=1e-6)


def test_an_unknown_time_unit_stops_before_training(stamped_roots, tmp_path, monkeypatch):
    from event_seg.data import event_scapes

    monkeypatch.setattr(event_scapes, "sniff_time_unit", lambda frames: None)
    cfg = _dataset_cfg(stamped_roots["us"], representation="time_surface")
    with pytest.raises(DatasetError, match="time_surface needs the unit of the event timestamps"):
        _inputs(cfg, tmp_path)
    _inputs(_dataset_cfg(stamped_roots["us"], representation="mdes"), tmp_path)  # no unit needed


def test_the_prepared_cache_is_keyed_by_tau(stamped_roots, tmp_path, monkeypatch):
    """A dense cache entry holds the surface of one tau: another tau never finds it."""
    from event_seg.data import packed_cache
    from event_seg.prepare import main as prepare_main

    monkeypatch.setattr(packed_cache, "_prefer_dense", lambda raw_bytes, dense_bytes: True)
    cache = tmp_path / "cache"
    args = ["dataset=event_scapes", f"dataset.root={stamped_roots['us']}", "dataset.height=32",
            "dataset.width=64", "dataset.modality=events", "dataset.representation=time_surface",
            f"paths.cache_dir={cache}", "trainer.num_workers=0", "trainer.progress_bar=false"]
    assert prepare_main(args + ["dataset.time_surface.tau_ms=30"]) == 0
    for tau_ms in (30.0, 5.0):
        cfg = _dataset_cfg(stamped_roots["us"], representation="time_surface",
                           time_surface={"tau_ms": tau_ms})
        _, samples, inputs = _inputs(cfg, cache)
        _, raw_samples, raw = _inputs(_dataset_cfg(stamped_roots["us"],
                                                   representation="time_surface",
                                                   representation_cache=False,
                                                   time_surface={"tau_ms": tau_ms}), cache)
        assert all(("dense" in s) == (tau_ms == 30.0) for s in samples)  # served only for 30
        assert not any("dense" in s for s in raw_samples)
        torch.testing.assert_close(inputs, raw, rtol=2e-3, atol=2e-3)  # float16 entries
    # tau keys only the time surface's cache: the voxel grid's folder does not move with it.
    def folder(**extra):
        return packed_cache.PackedCache(str(cache), _dataset_cfg(stamped_roots["us"], **extra),
                                        stamped_roots["us"]).dir

    assert folder(time_surface={"tau_ms": 5.0}) == folder(time_surface={"tau_ms": 30.0})
    assert folder(representation="time_surface", time_surface={"tau_ms": 5.0}) != \
        folder(representation="time_surface", time_surface={"tau_ms": 30.0})


# ---------------------------------------------------------------------------------------------
# The CLI: the channels flow through a real (tiny) training run
# ---------------------------------------------------------------------------------------------

def test_training_cli_with_the_time_surface(tmp_path, cache):
    """One tiny run (the MDES takes the same path: see the builder tests above)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train_cli import run_cli

    proc = run_cli("dataset.representation=time_surface", "dataset.time_surface.tau_ms=20",
                   "trainer.epochs=1", "logger=none", "trial_timestamp=r", out=tmp_path,
                   cache=cache)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "time_surface x2, input channels 5" in output  # rgb+events: 3 + 2
    assert "Event timestamps are in ns" in output  # the synthetic set's unit, detected
    state = torch.load(tmp_path / "unet_r" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"]["encoder.conv1.weight"].shape[1] == 5
    assert state["dataset_info"]["time_surface_tau_ms"] == 20.0
