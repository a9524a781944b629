"""``hydra/sweeper=event_seg_optuna``: a shared, persistent Optuna search (``hparams_search=optuna``).

A thin shell: Hydra finds the class here, the work is in ``event_seg.optuna_search``. Current
Optuna (ask/tell, journal storage, the GP sampler) instead of hydra-optuna-sweeper, which pins
optuna<3.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


@dataclass
class EventSegOptunaSweeperConf:
    _target_: str = "hydra_plugins.event_seg_sweeper.optuna_sweeper.EventSegOptunaSweeper"
    # Where the study lives: null = <sweep folder>/optuna.db (SQLite); a SQLAlchemy URL; a *.db
    # path (SQLite); or any other path: Optuna's journal file (a shared file system, no server).
    storage: Optional[str] = None
    study_name: str = "event_seg"
    # auto: minimize a *loss, maximize anything else (see optimized_metric)
    direction: str = "auto"
    n_trials: int = 20            # trials in the whole study, all processes together
    n_jobs: int = 1               # trials per batch (run in parallel by joblib or SLURM)
    sampler: str = "tpe"          # tpe | gp | random | cmaes | qmc
    seed: Optional[int] = None
    heartbeat_s: int = 60         # a running trial's sign of life, for the other processes
    stale_after_s: int = 600      # a running trial silent this long was orphaned: queued again
    params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="event_seg_optuna",
                             node=EventSegOptunaSweeperConf, provider="event_seg")


class EventSegOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from omegaconf import OmegaConf

        self.settings = OmegaConf.create(settings)
        self.config = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        import sys

        from event_seg.errors import EventSegError
        from event_seg.optuna_search import OptunaSearch

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            OptunaSearch(self.settings, self.config, self.launcher, sweep_dir).run(list(arguments))
        except EventSegError as e:
            # One line and exit 2, as for any other mistake (Hydra would print a traceback).
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
