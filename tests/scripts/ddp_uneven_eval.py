"""Run under torchrun (2 gloo ranks): evaluates splits of 1, 3 and 5 samples with batch 1 and 2,
sharded unevenly over the ranks, and writes the metrics with those of one process that scores
the same split alone. Used by tests/test_distributed.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from event_seg import distributed  # noqa: E402
from event_seg.data.build import DataBundle, DatasetInfo  # noqa: E402
from event_seg.data.collate import collate_compact  # noqa: E402
from event_seg.data.sampling import EpochSampler  # noqa: E402
from event_seg.engine.trainer import Trainer  # noqa: E402
from event_seg.engine.trial import Trial  # noqa: E402
from event_seg.loggers.base import LoggerGroup  # noqa: E402
from event_seg.models import build_model  # noqa: E402

H, W, CLASSES = 32, 64, 4


class Frames:
    """Deterministic samples: sample i is the same on every rank."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key  # EpochSampler yields (index, epoch)
        g = torch.Generator().manual_seed(i)
        mask = torch.randint(0, CLASSES, (H, W), generator=g, dtype=torch.uint8)
        mask[: i % 5] = 255  # a few ignored rows
        # A compact sample (see event_seg/data/sample.py) with a dense event tensor.
        return {"rgb": torch.randint(0, 256, (H, W, 3), generator=g, dtype=torch.uint8).numpy(),
                "dense": torch.randn(2, H, W, generator=g).numpy(), "mask": mask.numpy(),
                "id": str(i)}


def trainer_for(cfg, size, batch, ctx, model):
    info = DatasetInfo(name="frames", class_names=[f"c{k}" for k in range(CLASSES)],
                       palette=[[k, k, k] for k in range(CLASSES)], ignore_index=255,
                       split_sizes={"val": size}, representation="histogram", num_bins=2,
                       modality="rgb+events", event_channels=2, input_channels=5, root=".")
    sampler = EpochSampler(size, shuffle=False, rank=ctx.rank, world_size=ctx.world_size)
    loader = DataLoader(Frames(size), batch_size=batch, sampler=sampler,
                        collate_fn=collate_compact)
    trial = Trial(name="ddp", timestamp="t", run_dir=Path(sys.argv[1]).parent)
    return Trainer(cfg, model, DataBundle(info=info, loaders={"val": loader}), LoggerGroup([]),
                   trial, dist=ctx)


def main():
    from hydra import compose, initialize_config_dir

    import event_seg.config  # noqa: F401  (schemas)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["debug=smoke", "logger=none", "trial_timestamp=t",
                                          "trainer.limit_batches=null", "trainer.vis.num_batches=0"])
    ctx = distributed.context()
    torch.manual_seed(0)
    info_model = DatasetInfo(name="frames", class_names=[f"c{k}" for k in range(CLASSES)],
                             palette=[[0, 0, 0]] * CLASSES, ignore_index=255, split_sizes={},
                             representation="histogram", num_bins=2, modality="rgb+events",
                             event_channels=2, input_channels=5, root=".")
    model = build_model(cfg.model, info_model)
    alone = distributed.Context()  # rank 0 of 1: what a single process scores
    results = []
    for size in (1, 3, 5):
        for batch in (1, 2):
            cfg.trainer.batch_size = batch
            sharded = trainer_for(cfg, size, batch, ctx, model)
            metrics = sharded.evaluate(sharded.data.loaders["val"], "val", 1)
            entry = {"size": size, "batch": batch, "sharded": metrics,
                     "scored": sharded.scored_samples}
            if ctx.is_main:
                single = trainer_for(cfg, size, batch, alone, model)
                entry["single"] = single.evaluate(single.data.loaders["val"], "val", 1)
            results.append(entry)
    if ctx.is_main:
        Path(sys.argv[1]).write_text(json.dumps(results))
    distributed.shutdown()


if __name__ == "__main__":
    main()
