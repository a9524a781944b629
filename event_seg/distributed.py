"""Multi-GPU and multi-node training with torchrun and DistributedDataParallel.

    torchrun --nproc_per_node=4 -m event_seg.train experiment=event_scapes_fusion

torchrun starts one process per device and sets RANK, LOCAL_RANK and WORLD_SIZE; everything here
is a no-op without them (WORLD_SIZE unset or 1), so a single process never pays for it. Rank 0
alone logs, visualises and writes checkpoints; every rank reads the same run folder, which must be
on a file system all nodes share (the usual cluster home or scratch). NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import EventSegError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def init_process_group() -> None:
    """Joins the job's process group once (idempotent). Both backends are registered so CPU
    tensors (the start-up handshake) and CUDA tensors (gradients, metrics) can be reduced."""
    import torch
    import torch.distributed as dist

    if not is_distributed() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group(backend="gloo")


def agree_on_timestamp(timestamp: str) -> str:
    """Every rank takes rank 0's start time, so all of them name the same run folder."""
    if not is_distributed():
        return timestamp
    import torch.distributed as dist

    init_process_group()
    box = [timestamp]
    # On CPU tensors: gloo carries them on both the CPU and the mixed CPU/CUDA group.
    dist.broadcast_object_list(box, src=0, device="cpu")
    return box[0]


def leave_it_to_rank_0(line: str, exit_code: int = 2, timeout_s: float = 30.0) -> None:
    """Ends a rank > 0 that met an error rank 0 meets too (the same command, the same config):
    rank 0 prints it and exits, and torchrun then stops this process (its SIGTERM ends it here
    with ``exit_code``). Exiting at once instead would race rank 0: torchrun stops the others
    as soon as one process ends, often before rank 0 has printed anything. Still running after
    ``timeout_s``, the error is this rank's own (a file only its node lacks): it prints ``line``."""
    import signal
    import sys
    import time

    def stopped(signum, frame):
        raise SystemExit(exit_code)

    signal.signal(signal.SIGTERM, stopped)
    time.sleep(timeout_s)
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(exit_code)


class PeerFailed(EventSegError):
    """Rank 0 failed in a step the others waited for (rank 0 reports the error itself)."""

    def __init__(self, exit_code: int):
        super().__init__(f"rank 0 failed (exit code {exit_code}); its error says why")
        self.exit_code = exit_code


@dataclass
class Context:
    """Where this process stands in the job; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first, the others after it (rank 0 generates or indexes the
        data they then read). When rank 0 fails in it, the others raise :class:`PeerFailed`
        with its exit code instead of meeting a closed connection in the next collective (a
        traceback per rank, under the one line that says what went wrong)."""
        if not self.enabled:
            yield
            return
        if not self.is_main:
            code = self._agree_exit_code(0)
            if code:
                raise PeerFailed(code)
            yield
            return
        try:
            yield
        except BaseException as e:
            self._agree_exit_code(2 if isinstance(e, EventSegError) else 1)
            raise
        self._agree_exit_code(0)

    def _agree_exit_code(self, code: int) -> int:
        """The largest exit code any rank brings (0: all went well); a barrier too."""
        import torch
        import torch.distributed as dist

        box = torch.tensor([code], dtype=torch.int64)  # CPU: gloo carries it on every group
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return int(box.item())

    def sum_(self, tensor):
        """Sums ``tensor`` over the ranks in place (a no-op alone); returns it."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_(self, tensor):
        """Element-wise logical or of a small flag tensor over the ranks, in place."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def broadcast_buffers(self, module) -> None:
        """Gives every rank rank 0's buffers (BatchNorm running statistics): each rank updates
        its own on its own batches, and evaluation must use the ones the checkpoint holds."""
        if self.enabled:
            import torch.distributed as dist

            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


def adopt_slurm_tasks() -> None:
    """A submitit job with several tasks (``hydra.launcher.tasks_per_node``) starts one process
    per task with SLURM's variables; DDP reads torchrun's (RANK, WORLD_SIZE, MASTER_ADDR...).
    submitit's own helper maps one to the other. Nothing to do under torchrun or alone."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    if "SUBMITIT_FOLDER" not in os.environ and "SUBMITIT_EXECUTOR" not in os.environ:
        return  # a plain `srun python -m event_seg.train`: use torchrun inside it instead
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export()


def context() -> Context:
    """Joins the process group when torchrun (or a multi-task submitit job) started us;
    describes this process."""
    adopt_slurm_tasks()
    if not is_distributed():
        return Context()
    init_process_group()
    return Context(rank=rank(), world_size=world_size(), local_rank=local_rank())


def shutdown() -> None:
    if is_distributed():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
