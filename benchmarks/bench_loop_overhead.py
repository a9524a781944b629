"""Loop overhead: our Trainer's training epoch against a bare PyTorch loop doing the same work
(same model, batches, optimizer, loss, gradient clipping and schedule), interleaved.

    .venv/bin/python benchmarks/bench_loop_overhead.py [--quick]

The batches are loaded once and replayed from memory to both loops, so the ratio isolates what
the loop itself adds: device moves, autocast, the non-finite check, the progress bar, logging.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, Result  # noqa: E402


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, "trial_timestamp=bench"])


def bare_epoch(model, batches, optimizer, scheduler, clip, info, normalize_events):
    """What anyone would write by hand for compact batches: the voxel grid by the library's
    batched scatter, RGB normalised, concatenated."""
    import torch
    import torch.nn.functional as F

    from event_seg.data.events import events_to_tensor_batch
    from event_seg.data.transforms import normalize_rgb

    model.train()
    step = 0
    for batch in batches:
        size = batch["mask"].shape[0]
        with torch.no_grad():
            packed = {k: batch[f"events_{k}"] for k in "xytp"}
            packed["batch_index"] = torch.repeat_interleave(torch.arange(size),
                                                            batch["events_count"])
            events = events_to_tensor_batch(packed, size, info.representation, info.num_bins,
                                            *batch["mask"].shape[1:], normalize=normalize_events)
            rgb = normalize_rgb(batch["rgb"])
            inputs = (rgb if info.modality == "rgb" else events if info.modality == "events"
                      else torch.cat([rgb, events], dim=1))
        loss = F.cross_entropy(model(inputs), batch["mask"].long(), ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        step += 1
        scheduler.apply(step)


def run(quick: bool = False, steps: int = 0, repeats: int = 0) -> Result:
    import tempfile

    import torch

    from event_seg.data import build_data
    from event_seg.engine.schedule import build_optimizer, build_scheduler
    from event_seg.engine.trainer import Trainer
    from event_seg.engine.trial import Trial
    from event_seg.loggers.background import BackgroundLogging
    from event_seg.loggers.base import LoggerGroup
    from event_seg.models import build_model

    steps = steps or (6 if quick else 12)
    repeats = repeats or (2 if quick else 3)
    cfg = compose(["logger=none", "trainer.progress_bar=false", "trainer.num_workers=0",
                   f"trainer.limit_batches={steps}"])
    torch.manual_seed(0)
    data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, seed=cfg.seed,
                      splits=("train",))
    batches = [b for _, b in zip(range(steps), data.loaders["train"])]
    data.loaders["train"] = batches  # both loops replay the same batches from memory

    ours_model = build_model(cfg.model, data.info)
    bare_model = build_model(cfg.model, data.info)
    bare_model.load_state_dict(ours_model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        trial = Trial(name="bench", timestamp="bench", run_dir=Path(tmp))
        trainer = Trainer(cfg, ours_model, data, BackgroundLogging(LoggerGroup([])), trial)
        optimizer = build_optimizer(cfg.optimizer, bare_model)
        scheduler = build_scheduler(cfg.scheduler, optimizer, steps, cfg.trainer.epochs)
        ours_t, bare_t = [], []
        def time_ours(epoch):
            started = time.perf_counter()
            trainer.train_one_epoch(epoch)
            return time.perf_counter() - started

        def time_bare(_):
            started = time.perf_counter()
            bare_epoch(bare_model, batches, optimizer, scheduler, cfg.trainer.grad_clip_norm,
                       data.info, cfg.dataset.normalize_events)
            return time.perf_counter() - started

        for epoch in range(1, repeats + 2):  # the first round warms both up and is dropped
            # Alternate who goes first, so neither always inherits the warmer caches.
            if epoch % 2:
                ours, bare = time_ours(epoch), time_bare(epoch)
            else:
                bare, ours = time_bare(epoch), time_ours(epoch)
            if epoch > 1:
                ours_t.append(ours)
                bare_t.append(bare)
    ours_s, bare_s = sum(ours_t) / len(ours_t), sum(bare_t) / len(bare_t)
    return Result(
        question=f"Loop overhead: Trainer vs a bare loop ({cfg.model.arch}/{cfg.model.encoder_name}, "
                 f"batch {cfg.trainer.batch_size}, {cfg.dataset.height}x{cfg.dataset.width}, "
                 f"{steps} steps, mean of {repeats})",
        header=["loop", "epoch (s)", "step (ms)"],
        rows=[["Trainer.train_one_epoch", ours_s, 1000 * ours_s / steps],
              ["bare PyTorch loop", bare_s, 1000 * bare_s / steps]],
        ratio_name="Trainer / bare", ratio=ours_s / bare_s, target="<= 1.03")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick).print()
