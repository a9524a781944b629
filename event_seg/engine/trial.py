"""A trial: the run folder, its name and timestamp, and where to resume from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple


@dataclass
class Trial:
    name: str
    timestamp: str
    run_dir: Path
    job_num: Optional[int] = None  # the multirun job number, None for a single run
    display_name: Optional[str] = None  # what trackers show; a sweep job's folder name

    def __post_init__(self):
        if self.display_name is None:
            self.display_name = self.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    @property
    def resume_path(self) -> Optional[Path]:
        """``last.pt`` when this trial's folder already holds one (a restart with its timestamp)."""
        return self.last_checkpoint if self.last_checkpoint.is_file() else None

    @classmethod
    def from_config(cls, cfg) -> "Trial":
        """Uses Hydra's output folder when Hydra runs us, else ``<output_root>/<run_name>``."""
        run_dir, job_num = None, None
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            hc = HydraConfig.get()
            run_dir = Path(hc.runtime.output_dir)
            if hc.mode == RunMode.MULTIRUN:
                job_num = hc.job.num
        except ValueError:  # not under @hydra.main (e.g. a notebook calling run(cfg))
            pass
        if run_dir is None:
            run_dir = Path(cfg.paths.output_root) / cfg.run_name
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(name=cfg.run_name, timestamp=str(cfg.trial_timestamp), run_dir=run_dir,
                   job_num=job_num, display_name=run_dir.name if job_num is not None else None)

    @property
    def metrics_file(self) -> Path:
        """Written last, atomically: its presence means the run finished."""
        return self.run_dir / "metrics.json"

    def finished_summary(self) -> Optional[dict]:
        """The summary of a run that already finished in this folder, else None."""
        import json

        try:
            return json.loads(self.metrics_file.read_text())
        except (OSError, ValueError):
            return None

    def saved_settings(self) -> Tuple[Optional[dict], int, Optional[Path]]:
        """``(config, epoch, source)`` of what this folder already holds: the config inside
        ``last.pt`` (what the weights were trained with) and its epoch, or, before the first
        checkpoint, the ``config.yaml`` the run wrote when it started; ``(None, 0, None)`` for
        a new folder."""
        if self.last_checkpoint.is_file():
            from .checkpoint import load_checkpoint

            state = load_checkpoint(self.last_checkpoint, mmap=True)  # the tensors stay on disk
            return state.get("config") or None, int(state.get("epoch", 0)), self.last_checkpoint
        config_file = self.run_dir / "config.yaml"
        if config_file.is_file():
            import yaml

            try:
                return yaml.safe_load(config_file.read_text()) or None, 0, config_file
            except (OSError, yaml.YAMLError):
                return None, 0, None
        return None, 0, None

    @property
    def named_by_timestamp(self) -> bool:
        """False when ``run_name`` leaves the timestamp out: the folder is then the same for
        every ``trial_timestamp``."""
        return self.timestamp in str(self.run_dir)

    def way_out(self, new_trial_command: str) -> str:
        """How to start afresh instead of resuming this folder, for the one-line refusals."""
        if self.named_by_timestamp:
            return f"start a new trial (a fresh folder): {new_trial_command}"
        return (f"choose another run_name: this folder is named by run_name={self.name} alone, "
                f"so trial_timestamp does not change it (run_name=<name>_${{trial_timestamp}} "
                f"gives one folder per trial)")


def write_text_atomic(path: Path, text: str) -> None:
    """A reader (or a crash) sees the old file or the new one, never half of it."""
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_output_folder(run_dir: Path, needed_bytes: int, disk_usage=None) -> None:
    """Fails before training, not after an epoch, when the run folder cannot take checkpoints:
    not writable, or less free space than two checkpoints (the temp file and the one it
    replaces) plus some room for logs."""
    import os
    import shutil

    from ..errors import ConfigError

    probe = Path(run_dir) / ".write-test"
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to the run folder {run_dir} ({e.strerror or e}); "
                          f"choose another with paths.output_root=...") from None
    free = (disk_usage or shutil.disk_usage)(run_dir).free
    required = 2 * needed_bytes + 64 * 2 ** 20
    if free < required:
        raise ConfigError(f"the run folder {run_dir} has {free / 2 ** 20:.0f} MiB free; this run "
                          f"needs about {required / 2 ** 20:.0f} MiB for its checkpoints and logs")
