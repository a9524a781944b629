"""Compact batches: collate packs events without padding, the device builds the model input,
and a short last evaluation batch padded to the full size scores exactly as it would unpadded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from event_seg.data.collate import batch_nbytes, collate_compact

sys.path.insert(0, str(Path(__file__).parent))
from test_nonfinite import make_trainer  # noqa: E402


def _sample(n_events, h=4, w=6, seed=0, dense=False):
    rng = np.random.default_rng(seed)
    s = {"rgb": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
         "mask": rng.integers(0, 3, (h, w)).astype(np.uint8), "id": f"s{seed}"}
    if dense:
        s["dense"] = rng.normal(size=(2, h, w)).astype(np.float32)
    else:
        s["events"] = {"x": rng.integers(0, w, n_events).astype(np.int16),
                       "y": rng.integers(0, h, n_events).astype(np.int16),
                       "t": np.sort(rng.integers(0, 1000, n_events)).astype(np.int32),
                       "p": rng.choice(np.array([-1, 1], np.int8), n_events)}
    return s


def test_collate_packs_events_one_after_another_without_padding():
    samples = [_sample(3, seed=0), _sample(0, seed=1), _sample(5, seed=2)]
    batch = collate_compact(samples)
    assert batch["rgb"].dtype == torch.uint8 and batch["rgb"].shape == (3, 4, 6, 3)
    assert batch["mask"].dtype == torch.uint8
    assert batch["events_x"].shape == (8,) and batch["events_count"].tolist() == [3, 0, 5]
    assert torch.equal(batch["events_x"][3:], torch.from_numpy(samples[2]["events"]["x"]))
    assert batch["id"] == ["s0", "s1", "s2"]
    # Bytes: frames and masks at one byte per value, events at 2 + 2 + 4 + 1 bytes each.
    assert batch_nbytes(batch) == 3 * 4 * 6 * 4 + 8 * 9 + 3 * 8


def test_dense_and_raw_samples_share_a_batch():
    from types import SimpleNamespace

    from event_seg.data.device_input import ModelInputBuilder

    samples = [_sample(4, seed=0), _sample(0, seed=1, dense=True)]
    info = SimpleNamespace(modality="events", representation="histogram", num_bins=5,
                           event_channels=2, ignore_index=255)
    built = ModelInputBuilder(info, "cpu", normalize_events=False)(collate_compact(samples))
    assert built.inputs.shape == (2, 2, 4, 6)
    assert built.inputs[0].sum() == 4  # four events counted
    assert torch.equal(built.inputs[1], torch.from_numpy(samples[1]["dense"]))


def test_padded_last_batch_scores_what_the_unpadded_one_does(tmp_path, cache):
    # 3 validation samples in batches of 2: the last batch holds one sample. On a GPU it is
    # padded to 2 (one input shape for cudnn); the padding must change no metric.
    trainer = make_trainer(tmp_path, cache, "trainer.limit_batches=null", "trainer.batch_size=2")
    loader = trainer.data.loaders["val"]
    assert len(loader.dataset) % 2 == 1
    plain = trainer.evaluate(loader, "val", epoch=1, visualize=False)
    plain_samples = trainer.scored_samples
    trainer.inputs.pad_to = 2
    shapes = []
    model = trainer.model
    hook = model.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    padded = trainer.evaluate(loader, "val", epoch=1, visualize=False)
    hook.remove()
    assert set(shapes) == {(2, 8, 32, 64)}  # one shape for every batch
    assert trainer.scored_samples == plain_samples == len(loader.dataset)
    assert padded.keys() == plain.keys()
    for key in plain:
        assert abs(padded[key] - plain[key]) < 1e-5, key
