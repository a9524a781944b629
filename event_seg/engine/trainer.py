"""The plain PyTorch training loop: train one epoch, validate, checkpoint, repeat.

Read it top to bottom: :meth:`Trainer.fit` is the whole story; ``train_one_epoch`` and
``evaluate`` get everything they need passed in. Per-batch losses are accumulated on the device
(no host sync per step); the progress bar reads them every ``log_every_n_steps`` batches.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from itertools import islice
from typing import Dict, Optional

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from ..config import ConfigError
from ..errors import CheckpointError, NonFiniteLossError
from ..data.device_input import ModelInputBuilder
from .checkpoint import (link_checkpoint, load_checkpoint, remove_stale_temp_files,
                         restore_rng_state, rng_state, save_checkpoint, trim_finished,
                         kept_line, weights_only)
from .crash import crash_point
from .inference import Predictor, build_predictor
from .metrics import SegmentationMetrics
from .preemption import StopRequest
from .ema import WeightEMA
from .losses import auto_class_weights, build_loss, saved_class_weights
from .schedule import build_optimizer, build_scheduler
from .trial import write_text_atomic
from ..distributed import Context

log = logging.getLogger(__name__)

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        # Under torchrun each process drives the GPU of its local rank.
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA GPU is visible; use trainer.device=cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name != "fp32" and device.type != "cuda":
        raise ConfigError(f"trainer.precision={name} needs a CUDA device; use fp32 or auto on CPU")
    return name


class Trainer:
    def __init__(self, cfg, model: nn.Module, data, loggers, trial, full_config: Optional[dict] = None,
                 dist: Optional[Context] = None):
        self.cfg = cfg  # the whole run config
        self.full_config = full_config or {}
        self.data = data
        self.info = data.info
        self.loggers = loggers
        self.trial = trial
        self.dist = dist or Context()  # rank 0 of 1 unless torchrun started us
        self.device = resolve_device(cfg.trainer.device, self.dist.local_rank)
        self.precision = resolve_precision(cfg.trainer.precision, self.device)
        fmt = cfg.trainer.memory_format
        self.channels_last = fmt == "channels_last" or (fmt == "auto" and self.device.type == "cuda")
        self.deterministic = bool(cfg.trainer.get("deterministic", False))
        if self.device.type == "cuda":
            configure_cuda_determinism(self.deterministic)
        self.model = model.to(self.device)  # the bare model: checkpoints, evaluation
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.train_model = self.model  # what the training step calls: DDP-wrapped under torchrun
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.trainer.compile:
            self.train_model = torch.compile(self.train_model)
        # No train loader: an evaluation-only trainer (event-seg-evaluate).
        self.batches_per_epoch = (_limited_len(data.loaders["train"], cfg.trainer.limit_batches)
                                  if "train" in data.loaders else 1)
        # Gradients of `accumulate` batches are summed before each optimizer step; the schedule
        # counts optimizer steps (a partial last group is a step too).
        self.accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.accumulate)
        # The dense input is built on the device; every batch it sees has the loader's batch size
        # (a smaller last evaluation batch is padded on a GPU: one shape, tuned once).
        self.inputs = ModelInputBuilder(
            self.info, self.device, normalize_events=bool(cfg.dataset.normalize_events),
            channels_last=self.channels_last, deterministic=self.deterministic,
            pad_to=cfg.trainer.batch_size if self.device.type == "cuda" else None)
        self.optimizer = build_optimizer(cfg.optimizer, self.model)
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer, self.steps_per_epoch,
                                         cfg.trainer.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.class_weights = self._class_weights()
        self.criterion = build_loss(cfg.loss, self.info.num_classes, self.info.ignore_index,
                                    self.class_weights).to(self.device)
        # What each evaluation batch's loss is a mean over (its labelled pixels' class weights):
        # a split's loss is then the mean over all its pixels, whatever the batch size.
        self._loss_weight_sum = self.criterion.pixel_weight_sum
        decay = cfg.trainer.ema.decay
        self.ema = WeightEMA(self.model, decay) if decay is not None else None
        # Evaluation: plain prediction for validation unless evaluate.in_validation; the
        # configured TTA / sliding window for the final test and event-seg-evaluate.
        self.test_predictor = build_predictor(cfg.evaluate, self._autocast)
        self.val_predictor = (self.test_predictor if cfg.evaluate.in_validation
                              else Predictor(autocast=self._autocast))
        stopping = cfg.trainer.early_stopping
        self.patience, self.min_delta = stopping.patience, float(stopping.min_delta)
        self.stale_epochs = 0  # epochs since val_mean_iou last beat es_reference by min_delta
        # The score that last reset the count (best_metric moves on any improvement; this one
        # only on an improvement larger than min_delta), and its epoch.
        self.es_reference, self.es_reference_epoch = -math.inf, 0
        self.pending_batches = 0  # backward passes summed since the last optimizer step
        self.stopped_early_at: Optional[int] = None
        self.last_confusion = None  # the last evaluation's confusion matrix (numpy), for images
        self.best_val_scores: Dict[str, float] = {}  # val metrics of the best epoch (this process)
        # The best of every epoch for each validation score (the lowest loss): what
        # optimized_metric=best_val_* hands a sweeper. Kept in checkpoints.
        self.val_bests: Dict[str, float] = {}
        self.summary: Dict[str, Any] = {}  # what metrics.json holds, once the final test ran
        self.start_epoch = 0
        self.global_step = 0
        self.best_metric = -math.inf
        self.best_epoch = 0
        self.epoch_times: list = []  # seconds per epoch run in this process (benchmarks read them)
        self.skipped_batches = 0  # batches with a non-finite loss (trainer.nonfinite=skip)
        self.empty_batches = 0  # training batches without a labelled pixel (skipped)
        self.scored_samples = 0  # samples the last evaluate() scored, over all ranks
        self.saved_epoch = 0  # the epoch last.pt holds (0: none yet)
        self.stop = StopRequest()
        # Where a host sync per step costs (CUDA), and nothing is skipped (nonfinite=stop), the
        # non-finite check is deferred; the first bad batch is still the one named.
        self.defer_nonfinite_check = (self.device.type == "cuda" and cfg.trainer.nonfinite == "stop"
                                      and not self.dist.enabled)

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> float:
        t = self.cfg.trainer
        from ..targets import described

        log.info("Training %s on %s (%s): %d epochs x %d steps%s, run folder %s",
                 described(self.cfg.model, "arch"), self.device, self.precision, t.epochs,
                 self.steps_per_epoch,
                 f" of {self.accumulate} batches" if self.accumulate > 1 else "",
                 self.trial.run_dir)
        with self.stop:
            return self._fit_epochs()

    def _fit_epochs(self) -> float:
        t = self.cfg.trainer
        if self.start_epoch and self.patience is not None and self.stale_epochs >= self.patience:
            # Resumed after early stopping had fired (killed before the final test), or with a
            # patience the saved count already exceeds: no further epoch, straight to the test.
            self.stopped_early_at = self.start_epoch
            log.info("Early stopping: %d epochs without a better val_mean_iou by epoch %d "
                     "(trainer.early_stopping.patience=%d); no further epoch is trained",
                     self.stale_epochs, self.start_epoch, self.patience)
            self._final_test()
            return self.best_metric
        for epoch in range(self.start_epoch + 1, t.epochs + 1):
            started = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this epoch started with
            train_loss = self.train_one_epoch(epoch)
            val = self.evaluate(self.data.loaders["val"], "val", epoch)
            self._log_confusion("val", epoch)
            metrics = {"train_loss": train_loss, **val, "learning_rate": lr}
            if self.skipped_batches:
                metrics["skipped_nonfinite_batches"] = self.skipped_batches
            if self.empty_batches:
                metrics["skipped_unlabelled_batches"] = self.empty_batches
            if self._inference_due(epoch):
                metrics.update(self.evaluate(self.data.loaders["test"], "inference", epoch))
            metrics["epoch_time_s"] = time.perf_counter() - started
            self.epoch_times.append(metrics["epoch_time_s"])
            self.loggers.log_metrics(metrics, epoch)
            self._note_val_bests(val)
            improved = val["val_mean_iou"] > self.best_metric
            if val["val_mean_iou"] > self.es_reference + self.min_delta:
                self.stale_epochs = 0
                self.es_reference, self.es_reference_epoch = val["val_mean_iou"], epoch
            else:
                self.stale_epochs += 1
            if improved:
                self.best_metric, self.best_epoch = val["val_mean_iou"], epoch
                self.best_val_scores = dict(val)
            stop_now = self.patience is not None and self.stale_epochs >= self.patience
            if stop_now:
                self.stopped_early_at = epoch
            self._save(epoch, improved)
            log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_mean_iou %.4f%s  (%.1fs)",
                     epoch, t.epochs, train_loss, val["val_loss"], val["val_mean_iou"],
                     "  *best*" if improved else "", metrics["epoch_time_s"])
            if stop_now:
                log.info("Early stopping after epoch %d/%d: val_mean_iou has not beaten %.4f "
                         "(epoch %d) by more than %g for %d epochs (trainer.early_stopping."
                         "patience=%d); best %.4f at epoch %d", epoch, t.epochs,
                         self.es_reference, self.es_reference_epoch, self.min_delta,
                         self.stale_epochs, self.patience, self.best_metric, self.best_epoch)
                self.loggers.log_metrics({"early_stopping_epoch": epoch}, epoch)
                break
        self._final_test()
        return self.best_metric

    def _note_val_bests(self, val: Dict[str, float]) -> None:
        for key in ("val_loss", "val_weighted_mean_iou", "val_pixel_accuracy"):
            if key not in val or not math.isfinite(val[key]):
                continue
            best = self.val_bests.get(key)
            better = min if key.endswith("loss") else max
            self.val_bests[key] = val[key] if best is None else better(best, val[key])

    def _inference_due(self, epoch: int) -> bool:
        inference = self.cfg.trainer.inference
        return (inference.enabled and "test" in self.data.loaders
                and epoch % inference.every_n_epochs == 0)

    def train_one_epoch(self, epoch: int) -> float:
        t = self.cfg.trainer
        self.model.train()
        loader = self.data.loaders["train"]
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # this epoch's order and augmentation (sampling.py)
        loss_sum = torch.zeros((), device=self.device)
        bad_batch = torch.full((), -1, device=self.device, dtype=torch.long)  # deferred check
        bad_loss = torch.zeros((), device=self.device)
        count = 0
        every = max(t.log_every_n_steps, 1)
        curve = _StepCurve(self.global_step)  # step/train_loss since the last point
        total = self.batches_per_epoch
        last_group = total - (total % self.accumulate or self.accumulate)  # its first batch
        self.optimizer.zero_grad(set_to_none=True)
        self.pending_batches = 0  # backward passes summed since the last optimizer step
        bar = self._progress(loader, f"epoch {epoch}/{t.epochs} train", total)
        for batch_idx, batch in enumerate(bar):
            group_end = (batch_idx + 1) % self.accumulate == 0 or batch_idx + 1 == total
            group = self.accumulate if batch_idx < last_group else total - last_group
            labelled = self._has_labelled_pixel(batch)
            if not labelled and not self.dist.enabled:
                # Nothing to learn from (a mean over zero pixels is NaN): no loss, no step.
                self.empty_batches += 1
                log.warning("Skipped batch %d of epoch %d: no labelled pixel (%d such batches "
                            "so far)", batch_idx, epoch, self.empty_batches)
                self._finish_group(group_end, epoch)
                continue
            built = self.inputs(batch)
            # DDP all-reduces gradients in backward: only once per group, on its last batch.
            sync = group_end or not self.dist.enabled
            with self._no_sync(not sync):
                with self._autocast():
                    logits = self.train_model(built.inputs)
                    loss = self._loss(logits, built.target, labelled)
                if self.defer_nonfinite_check:
                    # GPU, nonfinite=stop: note the first bad batch on the device and look every
                    # log_every_n_steps steps, so the step itself never waits for the host.
                    bad_batch, bad_loss = _note_first_nonfinite(loss, batch_idx, bad_batch,
                                                                bad_loss)
                elif self._any_nonfinite(loss):
                    # One host sync per step: the price of skipping exactly the bad batch. Under
                    # DDP the ranks agree first, or one rank skipping would hang the others.
                    self._nonfinite(epoch, batch_idx, float(loss.detach()))
                    self._finish_group(group_end, epoch, synced=False)
                    continue
                # The mean over the group's batches: accumulate x batch b is batch accumulate*b.
                self.scaler.scale(loss / group if group > 1 else loss).backward()
            self.pending_batches += 1
            self._finish_group(group_end, epoch)
            crash_point("train", epoch, batch_idx)
            self._visualize("train", batch_idx, epoch, batch, built, logits)
            loss_sum += loss.detach()
            count += 1
            if count % every == 0:
                # The host reads the device once here: the deferred non-finite check, the
                # progress bar and the step curve share it.
                if self.defer_nonfinite_check:
                    self._raise_if_nonfinite(epoch, bad_batch, bad_loss)
                tracked = getattr(self.loggers, "active", False)
                if tracked or hasattr(bar, "set_postfix"):  # else nothing reads the loss here
                    total_loss = float(loss_sum)
                    lr = self.optimizer.param_groups[0]["lr"]
                    mean = curve.point(total_loss, count, self.global_step)
                    if tracked and mean is not None:
                        self.loggers.log_step_metrics(
                            {"step/train_loss": mean, "step/learning_rate": lr}, self.global_step)
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{total_loss / count:.4f}", lr=f"{lr:.2e}")
        if self.defer_nonfinite_check:
            self._raise_if_nonfinite(epoch, bad_batch, bad_loss)
        totals = self.dist.sum_(torch.stack([loss_sum, torch.tensor(float(count), device=self.device)]))
        if not int(totals[1]):
            raise NonFiniteLossError(
                f"no batch of epoch {epoch} was trained: all were skipped ({self.skipped_batches} "
                f"with a non-finite loss, {self.empty_batches} without a labelled pixel so far); "
                f"{self._kept_checkpoint()}. Lower optimizer.lr, or check the labels")
        return float(totals[0] / totals[1])

    def _finish_group(self, group_end: bool, epoch: int, synced: bool = True) -> None:
        """At the last batch of an accumulation group: one optimizer step over the summed
        gradients (none when every batch of the group was skipped), the schedule, the EMA."""
        if group_end and self.pending_batches:
            if self.dist.enabled and not synced:
                # The group's last backward was skipped, and with it DDP's all-reduce.
                self._average_gradients_over_ranks()
            t = self.cfg.trainer
            if t.grad_clip_norm:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.pending_batches = 0
            self.global_step += 1
            self.scheduler.apply(self.global_step)  # the rate of the next step
            if self.ema is not None:
                self.ema.update(self.model)
        self._check_stop(epoch)  # a requested stop lands here, between two batches

    def _average_gradients_over_ranks(self) -> None:
        import torch.distributed as dist

        for p in self.model.parameters():
            if not p.requires_grad:
                continue  # frozen: no gradient to agree on (and none to invent)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.dist.world_size

    def _no_sync(self, skip_sync: bool):
        if skip_sync and hasattr(self.train_model, "no_sync"):
            return self.train_model.no_sync()
        # torch.compile wraps DDP: its original module holds no_sync.
        inner = getattr(self.train_model, "_orig_mod", None)
        if skip_sync and hasattr(inner, "no_sync"):
            return inner.no_sync()
        return nullcontext()

    @property
    def eval_model(self) -> nn.Module:
        """What validation, the best checkpoint and the test score: the EMA when there is one."""
        return self.ema.model if self.ema is not None else self.model

    @torch.no_grad()
    def evaluate(self, loader, prefix: str, epoch: int, visualize: bool = True,
                 predictor: Optional[Predictor] = None) -> Dict[str, float]:
        """Loss and segmentation metrics over ``loader``, named ``<prefix>_...``.

        The loss is the training objective, each batch weighted by what its loss is a mean over
        (its labelled pixels, or their class weights: SegmentationLoss.pixel_weight_sum), so
        that cross-entropy is the mean over every scored pixel, however the split is cut into
        batches or shared among ranks. Sets ``scored_samples``: the samples scored, over all ranks
        (``limit_batches`` may cut the split short), and ``last_confusion``.
        """
        t = self.cfg.trainer
        model = self.eval_model
        predictor = predictor or (self.test_predictor if prefix == "test" else self.val_predictor)
        self.model.eval()
        model.eval()
        self.dist.broadcast_buffers(model)  # every rank scores rank 0's (saved) model
        metrics = SegmentationMetrics(self.info.num_classes, self.info.ignore_index,
                                      self.info.class_names, self.device)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        pixels = torch.zeros((), device=self.device, dtype=torch.float64)
        samples = torch.zeros((), device=self.device, dtype=torch.float64)
        total = _limited_len(loader, t.limit_batches)
        # Evaluation shards are uneven (every sample once): a rank may have a batch less than
        # another. The per-batch stop agreement is a collective, so every rank goes round as
        # often as the busiest one; a rank out of batches only takes part in the agreement.
        rounds = self._most_batches_of_any_rank(total)
        batches = iter(self._progress(loader, f"epoch {epoch}/{t.epochs} {prefix}", total))
        for batch_idx in range(rounds):
            batch = next(batches, None)
            if batch is not None:
                built = self.inputs(batch, pad=True)
                target = built.target
                logits = predictor(model, built.inputs)
                # Padded samples (target all ignore) add nothing to the loss or the metrics.
                weight = self._loss_weight_sum(target)
                loss = self.criterion(logits, target).double() * weight
                loss_sum += torch.where(weight > 0, loss, torch.zeros_like(loss))
                pixels += weight
                samples += built.samples
            self._check_stop(epoch)
            if batch is None:
                continue
            crash_point(prefix, epoch, batch_idx)
            if visualize:
                self._visualize(prefix, batch_idx, epoch, batch, built, logits)
            metrics.update(logits.float(), target)
        for _ in batches:  # closes the progress bar
            pass
        totals = self.dist.sum_(torch.stack([loss_sum, pixels, samples]))
        self.scored_samples = int(totals[2])
        # Summed over the ranks here, by one collective every rank reaches.
        scores = metrics.compute(prefix, reduce=self.dist.sum_)
        self.last_confusion = metrics.last_confusion
        # No labelled pixel: 0. A class-weight sum may be below 1, so no clamp(min=1).
        weights = torch.where(totals[1] > 0, totals[1], torch.ones_like(totals[1]))
        return {f"{prefix}_loss": float(totals[0] / weights), **scores}

    def _most_batches_of_any_rank(self, batches: int) -> int:
        if not self.dist.enabled:
            return batches
        most = torch.tensor([float(batches)], device=self.device)
        return int(self.dist.any_(most)[0])  # a MAX over the ranks

    # -- helpers ------------------------------------------------------------------------------
    def _any_nonfinite(self, loss) -> bool:
        bad = (~torch.isfinite(loss.detach())).float()
        return bool(self.dist.any_(bad.reshape(1))[0]) if self.dist.enabled else bool(bad)

    def _raise_if_nonfinite(self, epoch: int, bad_batch, bad_loss) -> None:
        batch = int(bad_batch)  # the host sync, every log_every_n_steps steps
        if batch >= 0:
            self._nonfinite(epoch, batch, float(bad_loss))

    def _check_stop(self, epoch: int) -> None:
        """Raises Preempted at this batch boundary when a stop was asked for. Under DDP the
        ranks agree first: the signal may reach them a batch apart."""
        if self.dist.enabled:
            asked = torch.tensor([0.0 if self.stop.signum is None else float(self.stop.signum)],
                                 device=self.device)
            signum = int(self.dist.any_(asked)[0])
            if signum and self.stop.signum is None:
                self.stop.signum = signum
        self.stop.check(epoch)

    def _loss(self, logits, target, labelled: bool = True):
        if labelled:
            return self.criterion(logits, target)
        # Under DDP a rank whose batch has no labelled pixel still steps with the others (every
        # rank takes part in each gradient all-reduce): its loss is 0, with zero gradients,
        # not the NaN of a mean over nothing.
        return logits.float().sum() * 0.0

    def _has_labelled_pixel(self, batch) -> bool:
        """Checked on the loader's CPU mask, so no device sync."""
        return bool((batch["mask"] != self.info.ignore_index).any())

    def _class_weights(self):
        """``loss.class_weights``: as listed, or for ``auto`` counted over the train labels once
        per run (kept in the run folder, so a resume does not count again)."""
        weights = self.cfg.loss.class_weights
        if weights != "auto":
            return None if weights is None else [float(w) for w in weights]
        cache = self.trial.run_dir / "class_weights.json"
        if "train" not in self.data.loaders:  # evaluation only: the weights the run counted
            saved = saved_class_weights(cache)
            if saved is None:
                log.warning("loss.class_weights=auto but %s is missing: the loss is reported "
                            "unweighted", cache)
            return saved
        reader = self.data.loaders["train"].dataset.dataset
        while not hasattr(reader, "read_mask") and hasattr(reader, "dataset"):
            reader = reader.dataset  # under dataset.skip_corrupt's wrapper
        return auto_class_weights(reader, self.info, cache, self.dist, device=self.device,
                                  progress=bool(self.cfg.trainer.progress_bar))

    def _kept_checkpoint(self) -> str:
        if self.saved_epoch:
            return f"{self.trial.last_checkpoint} keeps epoch {self.saved_epoch}, the last good one"
        return "no checkpoint was written yet (that happens at the end of an epoch)"

    def _nonfinite(self, epoch: int, batch_idx: int, value: float) -> None:
        if self.cfg.trainer.nonfinite == "skip":
            self.skipped_batches += 1
            log.warning("Skipped batch %d of epoch %d: loss is %s (%d skipped so far)",
                        batch_idx, epoch, value, self.skipped_batches)
            return
        raise NonFiniteLossError(
            f"loss became {value} at epoch {epoch}, batch {batch_idx}; stopped without saving: "
            f"{self._kept_checkpoint()}. Lower optimizer.lr, or set trainer.nonfinite=skip to "
            f"skip such batches")

    def _log_confusion(self, stage: str, epoch: int) -> None:
        """The last evaluation's confusion matrix as a picture, rendered off the training
        thread (rank 0 only holds loggers)."""
        if self.last_confusion is None or not getattr(self.loggers, "active", False):
            return
        if hasattr(self.loggers, "log_confusion"):
            self.loggers.log_confusion(stage, epoch, self.last_confusion, self.info.class_names)

    def _log_class_table(self, test: Dict[str, float]) -> None:
        """Per-class IoU of the best checkpoint on the test split (and its validation scores
        at the best epoch) as one table in the trackers' summaries."""
        if not getattr(self.loggers, "active", False):
            return
        rows = [[name, test.get(f"test_iou/{name}", float("nan")),
                 self.best_val_scores.get(f"val_iou/{name}", float("nan"))]
                for name in self.info.class_names]
        self.loggers.log_table("per_class_iou", ["class", "test_iou", "val_iou (best epoch)"],
                               rows)

    def _visualize(self, stage: str, batch_idx: int, epoch: int, batch: dict, built,
                   logits) -> None:
        """Hands the first samples of an early batch to the logging thread for panels.

        The event panel shows the representation the model saw, copied back for these samples
        only; RGB and mask are the loader's uint8 CPU tensors (not reused by the loader).
        """
        vis = self.cfg.trainer.vis
        if batch_idx >= vis.num_batches or not getattr(self.loggers, "active", False):
            return
        k = min(vis.max_samples, built.samples)
        pred = logits[:k].detach().argmax(1).to(torch.uint8).cpu().numpy()
        mask = batch["mask"][:k].numpy()
        rgb = (batch["rgb"][:k].numpy() if "rgb" in batch
               else np.zeros(mask.shape + (3,), np.uint8))
        events = (built.events[:k].float().cpu().numpy() if built.events is not None
                  else np.zeros((k, 1) + mask.shape[1:], np.float32))
        self.loggers.log_batch(stage, batch_idx, epoch, rgb, events, mask, pred,
                               list(batch["id"][:k]))

    def _autocast(self):
        if self.precision in PRECISION_DTYPES:
            return torch.autocast(self.device.type, dtype=PRECISION_DTYPES[self.precision])
        return nullcontext()

    def _progress(self, loader, desc: str, total: int):
        batches = islice(loader, total)
        if not self.cfg.trainer.progress_bar or not self.dist.is_main:
            return batches
        from tqdm import tqdm

        return tqdm(batches, desc=desc, total=total, leave=False, dynamic_ncols=True, unit="batch")

    def _state(self, epoch: int) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "val_bests": dict(self.val_bests),
            "rng": rng_state(),
            "config": self.full_config,
            "dataset_info": self.info.as_dict(),
            "trial": {"name": self.trial.name, "timestamp": self.trial.timestamp},
            "early_stopping": {"stale_epochs": self.stale_epochs, "reference": self.es_reference,
                               "reference_epoch": self.es_reference_epoch},
            **({"ema_model": self.ema.model.state_dict(), "ema": self.ema.state_dict()}
               if self.ema is not None else {}),
        }

    def _save(self, epoch: int, improved: bool) -> None:
        # One host sync for the whole model, not one per parameter tensor.
        # BatchNorm statistics too: NaN running variances make every later prediction NaN.
        models = [self.model] + ([self.ema.model] if self.ema is not None else [])
        tensors = [t for m in models for t in (*m.parameters(), *m.buffers())
                   if t.is_floating_point()]
        if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise NonFiniteLossError(
                f"the weights are no longer finite after epoch {epoch}; not saving them over "
                f"{self.trial.last_checkpoint}: {self._kept_checkpoint()}. Lower optimizer.lr")
        self.saved_epoch = epoch
        if self.dist.is_main:  # one writer; the other ranks hold identical weights
            state = self._state(epoch)
            save_checkpoint(state, self.trial.last_checkpoint)
            if improved:
                self._save_best(state)
        self.dist.barrier()

    def _save_best(self, state: dict) -> None:
        """best.pt: the very file last.pt is (a hard link, no copy) when everything is kept;
        else the weights alone, a third of the file with AdamW's two moments per weight."""
        if self.cfg.trainer.checkpoints.keep == "all":
            link_checkpoint(self.trial.last_checkpoint, self.trial.best_checkpoint)
        else:
            save_checkpoint(weights_only(state), self.trial.best_checkpoint)

    def _keep_checkpoints(self) -> None:
        """Once metrics.json marks the run finished, nothing resumes or extends it
        (resume_rules.check_epochs), so unless trainer.checkpoints.keep=all the state only a
        resume reads goes: last.pt is slimmed to its weights (keep=weights) or removed
        (keep=best, where best.pt holds the weights that were scored)."""
        keep = self.cfg.trainer.checkpoints.keep
        if keep == "all":
            return
        trim_finished(self.trial.checkpoint_dir, keep)
        log.info(kept_line(self.trial.checkpoint_dir, keep))

    def resume_if_possible(self) -> None:
        """Restores everything from ``last.pt`` when the trial folder holds one.

        train.run has already refused a checkpoint trained with other settings
        (resume_rules.py); what may differ here is the number of epochs and of steps per epoch.
        """
        path = self.trial.resume_path
        if path is None:
            return
        self.dist.barrier()  # no rank reads last.pt while rank 0 may still tidy the folder
        removed = remove_stale_temp_files(self.trial.checkpoint_dir) if self.dist.is_main else 0
        if removed:
            log.info("Removed %d temp file(s) left by an interrupted checkpoint write", removed)
        state = load_checkpoint(path)
        if state.get("weights_only"):
            raise CheckpointError(
                f"{path} holds the weights only (trainer.checkpoints.keep dropped the optimizer "
                f"state when its run finished), so it cannot be resumed; start a new trial (it "
                f"still evaluates, exports and serves as model.encoder_weights)")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            planned = (self.scheduler.load_state_dict(state["scheduler"])
                       or self._plan_of_an_older_checkpoint(state))
            self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None:
                self.ema.load(state["ema_model"], state["ema"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path} does not fit this run's model or optimizer "
                                  f"({str(e).splitlines()[0]}); start a new trial") from None
        self.start_epoch = self.saved_epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state.get("best_epoch", 0))
        self.val_bests = dict(state.get("val_bests", {}))  # older checkpoints: from here on
        stopping = state.get("early_stopping", {})
        self.stale_epochs = int(stopping.get("stale_epochs", 0))
        self.es_reference = float(stopping.get("reference", self.best_metric))
        self.es_reference_epoch = int(stopping.get("reference_epoch", self.best_epoch))
        restore_rng_state(state["rng"])
        if self.best_epoch == self.start_epoch and self.dist.is_main:
            # A kill between writing last.pt and best.pt leaves best.pt one best behind.
            self._save_best(state)
        if planned:
            self._fit_schedule_to_remaining_epochs()
        self.scheduler.apply(self.global_step)  # the checkpoint's plan, not the saved rate
        log.info("Resumed from %s at epoch %d (best val_mean_iou %.4f)",
                 path, self.start_epoch, self.best_metric)

    def _plan_of_an_older_checkpoint(self, state: dict) -> bool:
        """A checkpoint written before plans were saved holds a ``LambdaLR`` state: rebuild the
        plan it followed from its own config and base rates, so a resume with more epochs is
        stretched like any other instead of jumping to a plan drawn from the new config."""
        saved = state.get("config") or {}
        epoch, step = int(state.get("epoch", 0)), int(state.get("global_step", 0))
        epochs = saved.get("trainer", {}).get("epochs")
        scheduler, base_lrs = saved.get("scheduler"), state["scheduler"].get("base_lrs")
        if not (epoch and step and epochs and scheduler and base_lrs):
            return False
        steps_per_epoch = step // epoch
        self.scheduler = build_scheduler(OmegaConf.create(scheduler), self.optimizer,
                                         steps_per_epoch, epochs)
        self.scheduler.base_lrs = [float(lr) for lr in base_lrs]
        return True

    def _fit_schedule_to_remaining_epochs(self) -> None:
        """The checkpoint's schedule goes on step for step when the remaining epochs have the
        steps it planned for. More epochs, or another number of steps per epoch
        (``limit_batches``, the number of ranks), stretch the rest of its curve to end with
        the last epoch: no jump, and no step at a zero rate."""
        planned = self.scheduler.total_steps
        wanted = self.global_step + (self.cfg.trainer.epochs - self.start_epoch) * self.steps_per_epoch
        if wanted == planned or wanted <= self.global_step:
            return
        before = self.scheduler.factor(self.global_step)
        self.scheduler.stretch(self.global_step, wanted)
        if self.scheduler.name == "none":
            return  # a constant rate has nothing to stretch
        log.info("Learning-rate schedule: %d steps remain where the checkpoint planned %d "
                 "(trainer.epochs=%d, %d steps per epoch); the rest of its %s curve is stretched "
                 "from step %d (lr %.3g) to end with epoch %d", wanted - self.global_step,
                 planned - self.global_step, self.cfg.trainer.epochs, self.steps_per_epoch,
                 self.scheduler.name, self.global_step,
                 self.scheduler.base_lrs[0] * before, self.cfg.trainer.epochs)

    def _final_test(self) -> None:
        """Scores the best checkpoint on the test split and writes ``metrics.json``."""
        summary = {"best_val_mean_iou": self.best_metric, "best_epoch": self.best_epoch,
                   "epochs": self.cfg.trainer.epochs, "epoch_times_s": self.epoch_times}
        summary.update({f"best_{key}": value for key, value in self.val_bests.items()})
        if self.stopped_early_at is not None:
            summary["stopped_early_at_epoch"] = self.stopped_early_at
        if self.ema is not None:
            summary["ema_decay"] = self.ema.decay
        loader = self.data.loaders.get("test")
        if loader is not None and self.trial.best_checkpoint.is_file():
            best = load_checkpoint(self.trial.best_checkpoint)
            self.model.load_state_dict(best["model"])
            if self.ema is not None:
                self.ema.model.load_state_dict(best["ema_model"])
            if not self.test_predictor.plain:
                log.info("test prediction: %s", self.test_predictor.describe())
            test = self.evaluate(loader, "test", self.cfg.trainer.epochs, visualize=False)
            self._log_confusion("test", self.cfg.trainer.epochs)
            self._log_class_table(test)
            # best_val_mean_iou: the one number a sweep (W&B, Optuna) ranks runs by.
            self.loggers.log_metrics({**test, "best_val_mean_iou": self.best_metric},
                                     self.cfg.trainer.epochs)
            summary.update(test)
            split_size = self.info.split_sizes.get("test", self.scored_samples)
            summary.update(test_samples=self.scored_samples, test_split_samples=split_size)
            if self.scored_samples < split_size:
                log.warning("test scored %d of %d samples (trainer.limit_batches=%s); "
                            "event-seg-evaluate scores the whole split", self.scored_samples,
                            split_size, self.cfg.trainer.limit_batches)
            log.info("test (best checkpoint, epoch %d): test_mean_iou %.4f  test_pixel_accuracy %.4f",
                     self.best_epoch, test["test_mean_iou"], test["test_pixel_accuracy"])
        self.summary = summary
        if self.dist.is_main:
            write_text_atomic(self.trial.metrics_file, json.dumps(summary, indent=2, allow_nan=True))
            crash_point("finish", self.cfg.trainer.epochs)  # finished, not yet trimmed
            self._keep_checkpoints()  # after metrics.json: a kill before it leaves a resumable run


class _StepCurve:
    """The points of the step curve: the mean training loss since the previous point."""

    def __init__(self, step: int):
        self.loss_sum, self.count, self.step = 0.0, 0, step

    def point(self, loss_sum: float, count: int, step: int) -> Optional[float]:
        """The mean since the last point, or None when no optimizer step happened since (a
        point per step: with accumulation, several batches make one step)."""
        if step == self.step or count == self.count:
            return None
        mean = (loss_sum - self.loss_sum) / (count - self.count)
        self.loss_sum, self.count, self.step = loss_sum, count, step
        return mean


def configure_cuda_determinism(deterministic: bool) -> None:
    """cudnn autotuning for speed (input shapes are fixed: tuned once), or deterministic kernels
    (``trainer.deterministic``): no autotuning, deterministic algorithms where torch has them."""
    import os

    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)


def _note_first_nonfinite(loss, batch_idx: int, bad_batch, bad_loss):
    """Device-side: keeps the index and value of the first batch whose loss is not finite."""
    first = (~torch.isfinite(loss.detach())) & (bad_batch < 0)
    return (torch.where(first, torch.full_like(bad_batch, batch_idx), bad_batch),
            torch.where(first, loss.detach().float(), bad_loss))


def _limited_len(loader, limit: Optional[int]) -> int:
    return len(loader) if limit is None else min(len(loader), limit)
