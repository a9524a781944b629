"""An Optuna search that many sweeper processes share, kept in storage that outlives them.

``hparams_search=optuna`` runs this through the Hydra sweeper in
``hydra_plugins/event_seg_sweeper`` (Hydra only loads sweepers from that namespace; the work is
done here). Over current Optuna's ask/tell interface:

- The study lives in storage: by default a SQLite file in the sweep folder
  (``optuna.db``), or ``hydra.sweeper.storage``: any SQLAlchemy URL (``postgresql://...``), a
  ``*.db`` path (SQLite), or any other path, which becomes Optuna's journal file (append-only,
  for clusters with a shared file system and no database server).
- Several sweeper processes with the same storage and ``study_name`` share the search: each
  asks the storage for trials (numbered by the storage, so no trial is handed out twice), runs
  them through its launcher and tells the results. ``n_trials`` is the size of the whole study,
  not of one process's share.
- A re-run of the sweep (same ``trial_timestamp``) loads the study instead of replaying the
  sampler. A trial left ``RUNNING`` by a process that died is failed and queued again with
  the same parameters, so its job resumes from its own checkpoint. A running trial is stale
  when it was this sweep folder's (we hold the folder's lock, so its owner is gone), when its
  process on this host is gone, or when its heartbeat (written every ``heartbeat_s``) is older
  than ``stale_after_s``.
- A study's first open is serialised under ``<database>.lock`` beside a SQLite file: Optuna
  sets up its schema without a transaction, so sweepers opening one new file together would
  race (``UNIQUE constraint failed: alembic_version.version_num``, ``table ... already exists``).
- A trial whose job the launcher could not run is failed (not queued again: it would fail
  again); only a stopped sweep (Ctrl-C, SIGTERM) hands its batch back. A queued trial whose
  values this search space does not hold is failed instead of run, and a failed trial's draw
  from another kind of distribution (an older sweeper's float for an integer key) is forgotten
  by Optuna (kept in the trial's ``event_seg:dropped_params``), so the study goes on.
- The sampler's seed is ``seed`` for the process that creates the study, so a one-process
  search is reproducible; a process joining an existing study (a second worker, a resume) mixes
  in its sweep folder and the study's size, so it does not repeat the creator's proposals.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigError
from .sweep_summary import first_line, pid_alive

log = logging.getLogger("event_seg.sweep")

SAMPLERS = ("tpe", "gp", "random", "cmaes", "qmc")
DIRECTIONS = ("auto", "maximize", "minimize")
DEFAULT_DB = "optuna.db"
# Trial system attributes (storage-level: they work on every storage and survive a restart).
OWNER = "event_seg:owner"          # "<host> <pid> <sweep folder>"
HEARTBEAT = "event_seg:heartbeat"  # unix time of the owner's last sign of life
REQUEUED = "event_seg:requeued"    # a stale trial that was queued again (not counted)
DROPPED = "event_seg:dropped"      # a queued trial outside the search space, never run (not counted)
DROPPED_PARAMS = "event_seg:dropped_params"  # a failed trial's draws Optuna was made to forget
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
JOB_DIR = "job_dir"                # user attribute: where the trial's job wrote
METRIC = "optimized_metric"        # study user attribute: what its values are


# ---------------------------------------------------------------------------------------------
# Settings, checked before any job starts (launch.py calls check_settings)

def check_settings(sweeper, optimized_metric: str, arguments: Sequence[str] = (),
                   cfg=None) -> None:
    """One line for each mistake a user can make in ``hydra.sweeper``; with ``cfg`` (the
    composed command), also each searched key whose values the config would not take."""
    if sweeper.direction not in DIRECTIONS:
        raise ConfigError(f"hydra.sweeper.direction={sweeper.direction!r} is not one of: "
                          f"{', '.join(DIRECTIONS)}")
    if sweeper.sampler not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler={sweeper.sampler!r} is not one of: "
                          f"{', '.join(SAMPLERS)}")
    for key in ("n_trials", "n_jobs", "heartbeat_s", "stale_after_s"):
        if int(sweeper[key]) < 1:
            raise ConfigError(f"hydra.sweeper.{key}={sweeper[key]} must be at least 1")
    storage = sweeper.storage
    if storage and "://" not in str(storage) and (str(storage).endswith("/")
                                                 or Path(str(storage)).expanduser().is_dir()):
        raise ConfigError(f"hydra.sweeper.storage={storage} is a folder; name a file in it "
                          f"(study.db for SQLite, study.log for a journal)")
    if sweeper.stale_after_s <= sweeper.heartbeat_s:
        raise ConfigError(f"hydra.sweeper.stale_after_s={sweeper.stale_after_s} must exceed "
                          f"heartbeat_s={sweeper.heartbeat_s} (a live trial beats every "
                          f"heartbeat_s)")
    space, _, typed, texts = _space(dict(sweeper.params or {}), arguments)
    if not space:
        raise ConfigError("nothing is left to search: every key of hydra.sweeper.params is fixed "
                          "on the command line (or there are none); search one with e.g. "
                          "'optimizer.lr=tag(log, interval(1e-4, 1e-2))'")
    if cfg is not None:
        check_values_fit(space, typed, texts, cfg)


def check_values_fit(space, typed: Dict[str, str], texts, cfg) -> None:
    """Sets a few values of each searched key on the composed config, as a trial's job would
    (through the override text it is given: a choice [0.9,1.1] is a list): a value the key
    cannot take (a float for an integer) is one line now, not a job that fails to start in
    every trial."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from .config import validate

    for key, dist in space.items():
        if "." not in key and OmegaConf.select(cfg, f"hydra.runtime.choices.{key}") is not None:
            continue  # a config group (model=unet,fpn): launch.py checks its options
        if isinstance(dist, CategoricalDistribution):
            values = list(dist.choices)
        elif isinstance(dist, FloatDistribution) and dist.step is None:
            # the ends, and a value in between that no integer is
            values = [dist.low + (dist.high - dist.low) * 0.377, dist.low, dist.high]
        else:
            values = [dist.low, dist.high]
        for value in values:
            variant = cfg.copy()
            [override] = OverridesParser.create().parse_overrides(
                trial_overrides({key: value}, texts))
            try:
                OmegaConf.update(variant, key, override.value(), merge=True)
                validate(variant)
            except (OmegaConfBaseException, ConfigError) as e:
                spec = f"{key}={typed.get(key, value)}"
                if isinstance(dist, FloatDistribution) and _takes_integers(cfg, key):
                    start, end = (_plain(v) for v in (dist.low, dist.high))
                    ints = f"int(interval({start}, {end}))"
                    between = dist.low + (dist.high - dist.low) * 0.377
                    raise ConfigError(
                        f"{spec} draws floats (such as {between:.4g}) and {key} takes "
                        f"integers: search it with "
                        f"{f'tag(log, {ints})' if dist.log else ints} or range(...)") from None
                raise ConfigError(f"{spec}: a trial would set {key}={value}: "
                                  f"{first_line(str(e))}") from None


def _takes_integers(cfg, key: str) -> bool:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default=None)
    return isinstance(value, int) and not isinstance(value, bool)


def _plain(number: float):
    return int(number) if float(number).is_integer() else number


def direction(setting: str, optimized_metric: str, warn: bool = True) -> str:
    from .config import metric_direction

    wanted = metric_direction(optimized_metric) if setting == "auto" else setting
    if warn and setting != "auto" and wanted != metric_direction(optimized_metric):
        log.warning("hydra.sweeper.direction=%s for optimized_metric=%s, which is usually "
                    "%sd", setting, optimized_metric, metric_direction(optimized_metric))
    return wanted


def search_space(params: Dict[str, Any], arguments: Sequence[str]):
    """Optuna distributions for the swept keys and the fixed overrides, from Hydra's override
    syntax: ``choice(a,b)`` or ``a,b`` (categorical), ``range(1,9)`` (integers, a step),
    ``interval(lo,hi)`` (floats), ``int(interval(lo,hi))`` (integers), ``tag(log, ...)`` (log
    scale). The command line's values override ``hydra.sweeper.params``."""
    space, fixed, _, _ = _space(params, arguments)
    return space, fixed


def _space(params: Dict[str, Any], arguments: Sequence[str]):
    """search_space(), each swept key's value as typed (for messages), and, for each choice,
    how Hydra reads each of its values back (see trial_overrides)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    lines = [f"{key}={value}" for key, value in _flat(params).items()]
    lines += [a for a in arguments if not a.lstrip("+~").startswith("hydra.sweeper.")]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException as e:
        raise ConfigError(f"hydra.sweeper.params: {str(e).splitlines()[0]}") from None
    space, fixed, typed, texts = {}, {}, {}, {}
    for o in parsed:
        key = o.get_key_element()
        fixed.pop(key, None)
        space.pop(key, None)
        if not o.is_sweep_override():
            fixed[key] = o.input_line  # as typed: keeps a `+` (add) or `~` (delete)
            continue
        typed[key] = o.input_line.split("=", 1)[1]
        value = o.value()
        if o.is_choice_sweep():
            from hydra.core.override_parser.types import Transformer

            from hydra.core.override_parser.types import Override

            # Optuna holds each choice as Hydra encodes it (a list as its text "[1,2]", a
            # string as itself); the override that hands it to the job is Hydra's own text
            # of it (a list as a list, a string escaped: 'a,b' is not a sweep of a and b).
            elements = value.list if hasattr(value, "list") else [value]
            texts[key] = {_typed(Transformer.encode(x)): Override._get_value_element_as_str(x)
                          for x in elements}
            space[key] = CategoricalDistribution(list(o.sweep_iterator(
                transformer=Transformer.encode)))
        elif o.is_range_sweep():
            spec = f"{key}={typed[key]}"
            if value.shuffle:
                raise ConfigError(f"{key}: shuffle(range(...)) is a grid idea; use choice(...)")
            if value.step == 0:
                raise ConfigError(f"{spec}: a range's step 0 never reaches its end")
            # The values Hydra's grid would sweep (its stop is exclusive, a step may count
            # down), as the Optuna distribution from the lowest to the highest of them.
            drawn = [float(f"{v:.12g}") if isinstance(v, float) else v
                     for v in o.sweep_iterator()]
            if not drawn:
                raise ConfigError(f"{spec}: the range holds no value (its stop is exclusive)")
            low, high, step = min(drawn), max(drawn), abs(value.step)
            if "log" in value.tags:
                if isinstance(low, float) or step != 1 or low <= 0:
                    raise ConfigError(f"{spec}: a log scale takes integers from 1 in steps of "
                                      f"1 (Optuna); use tag(log, int(interval(lo, hi))) or "
                                      f"tag(log, interval(lo, hi))")
                space[key] = IntDistribution(low, high, log=True)
            elif isinstance(low, float) or isinstance(high, float):
                space[key] = FloatDistribution(float(low), float(high), step=float(step))
            else:
                space[key] = IntDistribution(low, high, step=int(step))
        elif o.is_interval_sweep():
            log_scale = "log" in value.tags
            if value.start >= value.end or (log_scale and value.start <= 0):
                raise ConfigError(f"{key}: interval({value.start}, {value.end}) is empty"
                                  + (" or not positive (log scale)" if log_scale else ""))
            if isinstance(value.start, int) and isinstance(value.end, int):
                # int(interval(2, 6)): Hydra casts both ends; the trial draws integers.
                space[key] = IntDistribution(value.start, value.end, log=log_scale)
            else:
                space[key] = FloatDistribution(float(value.start), float(value.end),
                                               log=log_scale)
        else:
            raise ConfigError(f"{key}={o.input_line.split('=', 1)[1]}: the Optuna search takes "
                              "choice(...), range(...) or interval(...)")
    return space, fixed, typed, texts


def _typed(value) -> tuple:
    return type(value), value  # True == 1 == 1.0 as dict keys: keep them apart


def trial_overrides(params: Dict[str, Any], texts: Dict[str, Dict[tuple, str]]) -> List[str]:
    """A trial's values as overrides Hydra reads back as those values."""
    from hydra.core.override_parser.types import Override

    return [f"{k}={texts.get(k, {}).get(_typed(v)) or Override._get_value_element_as_str(v)}"
            for k, v in params.items()]


def _flat(params: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{optimizer: {lr: ...}}`` (a nested YAML block) as ``{"optimizer.lr": ...}``."""
    out: Dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) or (hasattr(value, "items") and not isinstance(value, str)):
            out.update(_flat(dict(value), name + "."))
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# Storage and study

def storage_for(setting: Optional[str], sweep_dir: Path):
    """An Optuna storage from ``hydra.sweeper.storage`` (see the module docstring)."""
    if not setting:
        setting = str(sweep_dir / DEFAULT_DB)
    try:
        return _open_storage(str(setting))
    except ConfigError:
        raise
    except Exception as e:  # a missing driver, a refused connection, a corrupt file, a folder
        raise ConfigError(f"hydra.sweeper.storage={setting}: cannot open it as an Optuna "
                          f"storage ({type(e).__name__}: {first_line(str(e))})") from None


def sqlite_file(setting: Optional[str], sweep_dir: Path) -> Optional[Path]:
    """The SQLite file a storage setting names, or None (a server URL, a journal)."""
    setting = str(setting or sweep_dir / DEFAULT_DB)
    if "://" in setting:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        # SQLAlchemy's own reading of the URL: a driver (sqlite+pysqlite://) and a query
        # (?timeout=5) name the same file as the plain URL, so they share its lock.
        try:
            url = make_url(setting)
        except ArgumentError:
            return None  # storage_for says what is wrong with it
        rest = url.database if url.get_backend_name() == "sqlite" else None
        return Path(rest).expanduser().absolute() if rest and rest != ":memory:" else None
    path = Path(setting).expanduser().absolute()
    return path if path.suffix in SQLITE_SUFFIXES else None


@contextmanager
def first_open_lock(setting: Optional[str], sweep_dir: Path):
    """Holds ``<database>.lock`` (beside a SQLite file) while a process opens the study: Optuna
    creates its tables and its alembic_version row outside one transaction, so processes
    opening one new file together fail (UNIQUE constraint failed: alembic_version.version_num,
    or table ... already exists). The lock file stays: removing it would race its next user."""
    path = sqlite_file(setting, sweep_dir)
    if path is None:  # a journal locks itself; a database server is left to Optuna
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a file where a folder should be, a folder we may not write in
        raise ConfigError(f"hydra.sweeper.storage={setting or path}: cannot open it as an Optuna "
                          f"storage ({type(e).__name__}: {first_line(str(e))})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close (or by the kernel, at a crash)
        yield
    finally:
        os.close(fd)


def _open_storage(setting: str):
    import optuna

    if "://" in setting:
        url = str(setting)
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(setting).expanduser().absolute()
        if setting.endswith("/") or path.is_dir():
            raise ConfigError(f"hydra.sweeper.storage={setting} is a folder; name a file in it "
                              f"(study.db for SQLite, study.log for a journal)")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix not in SQLITE_SUFFIXES:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path))), str(path)
        url = f"sqlite:///{path}"
    # SQLite: wait for a writer of another process instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine), url


def open_study(storage, name: str, wanted: str, metric: str, seed: Optional[int],
               sampler_name: str, sweep_dir: Path):
    """Creates the study, or joins it. Returns (study, created). A study optimises one metric
    in one direction: joining it with another is refused (its values would not compare)."""
    import optuna

    created = True
    try:
        optuna.create_study(storage=storage, study_name=name, direction=wanted)
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=name, storage=storage)
    have = study.direction.name.lower()
    had = study.user_attrs.get(METRIC)
    if have != wanted or (had is not None and had != metric):
        raise ConfigError(f"study {name} {have}s {had or 'its metric'}; this sweep would "
                          f"{wanted} {metric} (optimized_metric, hydra.sweeper.direction): "
                          f"keep those, or start another study (hydra.sweeper.study_name)")
    if had is None:
        study.set_user_attr(METRIC, metric)
    if seed is not None and not created:
        seed = _mixed_seed(seed, str(sweep_dir), len(study.get_trials(deepcopy=False)))
    study.sampler = make_sampler(sampler_name, seed)
    return study, created


def make_sampler(name: str, seed: Optional[int]):
    import optuna

    if name == "tpe":
        # constant_liar: trials running in other jobs count as bad-ish, so parallel jobs
        # spread out instead of proposing the same point.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.QMCSampler(seed=seed)


def _mixed_seed(seed: int, *parts) -> int:
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


# ---------------------------------------------------------------------------------------------
# Trials that nobody runs any more

def owner_tag(sweep_dir: Path) -> str:
    return f"{socket.gethostname()} {os.getpid()} {sweep_dir}"


def is_stale(trial, sweep_dir: Path, stale_after_s: float, now: float) -> bool:
    owner = str(trial.system_attrs.get(OWNER, ""))
    host, _, rest = owner.partition(" ")
    pid, _, folder = rest.partition(" ")
    if folder == str(sweep_dir) and pid != str(os.getpid()):
        return True  # our folder's lock is ours: whoever ran this trial from here is gone
    if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
        return True
    beat = trial.system_attrs.get(HEARTBEAT)
    last = float(beat) if beat is not None else (
        trial.datetime_start.timestamp() if trial.datetime_start else now)
    return now - last > stale_after_s


def requeue_stale_trials(study, sweep_dir: Path, stale_after_s: float) -> List[int]:
    """Fails each stale RUNNING trial and queues its parameters again. Returns their numbers."""
    from optuna.trial import TrialState

    now = time.time()
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if is_stale(t, sweep_dir, stale_after_s, now)]
    return requeue(study, stale, "left running by a process that is gone")


def requeue(study, numbers: List[int], why: str) -> List[int]:
    """Fails these trials, where still running, and queues their parameters again."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage, done = study._storage, []
    trials = study.get_trials(deepcopy=False)
    for trial in (trials[n] for n in numbers):
        if trial.state != TrialState.RUNNING:
            continue
        try:
            storage.set_trial_system_attr(trial._trial_id, REQUEUED, True)
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # it finished, or another process failed it first
        study.enqueue_trial(dict(trial.params), user_attrs={"requeued_from": trial.number})
        done.append(trial.number)
    if done:
        log.warning("Trial(s) %s %s: failed and queued again with the same parameters (a "
                    "job that finds its folder's last.pt resumes from it)",
                    ", ".join(map(str, done)), why)
    return done


def check_space_fits(study, space) -> None:
    """Refuses, before asking for a trial (which would stay behind, running), a search space
    whose choices differ from what the study's trials were drawn from."""
    from optuna.distributions import check_distribution_compatibility
    from optuna.trial import TrialState

    seen: Dict[str, Any] = {}
    # A failed trial has no value to compare: its draws do not bind the space (see
    # forget_failed_draws, which makes Optuna's storage agree).
    for trial in study.get_trials(deepcopy=False):
        if trial.state != TrialState.FAIL:
            seen.update(trial.distributions)
    for name, new in space.items():
        if name not in seen:
            continue
        try:
            check_distribution_compatibility(seen[name], new)
        except ValueError as e:
            raise ConfigError(f"{name}: the search space does not fit study {study.study_name}, "
                              f"whose trials drew it from {seen[name]} ({first_line(str(e))}); search "
                              f"that space again, or start another study "
                              f"(hydra.sweeper.study_name)") from None


def _fits(distribution, value) -> bool:
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):  # not one of a categorical's choices
        return False


def _compatible(old, new) -> bool:
    from optuna.distributions import check_distribution_compatibility

    try:
        check_distribution_compatibility(old, new)
    except ValueError:
        return False
    return True


def drop_queued_misfits(study, space) -> List[int]:
    """Fails, instead of running, each queued trial whose values this space does not hold
    (Optuna would run them anyway, with a warning): a float queued for a key now searched as
    integers would fail again in every re-run."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage, done = study._storage, []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        fixed = trial.system_attrs.get("fixed_params", {})
        outside = {k: v for k, v in fixed.items() if k in space and not _fits(space[k], v)}
        if not outside:
            continue
        try:
            storage.set_trial_system_attr(trial._trial_id, DROPPED, True)
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # another process took it first
        log.warning("Trial %d queued with %s, which this search space does not hold "
                    "(%s): failed instead of run", trial.number,
                    " ".join(f"{k}={v}" for k, v in outside.items()),
                    ", ".join(f"{k} in {space[k]}" for k in outside))
        done.append(trial.number)
    return done


def forget_failed_draws(study, space, storage, where: str) -> List[int]:
    """Optuna's storage refuses a distribution of another kind for a key any trial of the study
    drew, failed ones included, so one failed trial (an older sweeper's float for an integer
    key) would bar the key's right space for good. A failed trial's draw compares nothing:
    its conflicting parameters are removed from the trial (their values are kept in its
    ``event_seg:dropped_params``). Returns the trials' numbers."""
    import optuna
    from optuna.trial import TrialState

    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    conflicts: Dict[int, Dict[str, Any]] = {}  # trial id -> its conflicting draws
    numbers = []
    for trial in failed:
        for name, old in trial.distributions.items():
            if name in space and not _compatible(old, space[name]):
                conflicts.setdefault(trial._trial_id, {})[name] = trial.params[name]
        if trial._trial_id in conflicts:
            numbers.append(trial.number)
    if not conflicts:
        return []
    names = sorted({n for params in conflicts.values() for n in params})
    if not isinstance(storage, optuna.storages.RDBStorage):
        raise ConfigError(f"{names[0]}: failed trial(s) {', '.join(map(str, numbers))} of study "
                          f"{study.study_name} drew it from another kind of distribution, and a "
                          f"journal ({where}) cannot forget a draw: search that space again, "
                          f"or start another study (hydra.sweeper.study_name)")
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    # One transaction: the parameters go, the record of them comes (a finished trial's
    # attributes cannot be set through Optuna's API).
    with _create_scoped_session(storage.scoped_session, True) as session:
        for trial_id, params in conflicts.items():
            session.query(models.TrialParamModel).filter(
                models.TrialParamModel.trial_id == trial_id,
                models.TrialParamModel.param_name.in_(list(params))).delete(
                    synchronize_session=False)
            attr = session.query(models.TrialSystemAttributeModel).filter(
                models.TrialSystemAttributeModel.trial_id == trial_id,
                models.TrialSystemAttributeModel.key == DROPPED_PARAMS).one_or_none()
            kept = {**(json.loads(attr.value_json) if attr else {}), **params}
            if attr is None:
                session.add(models.TrialSystemAttributeModel(
                    trial_id=trial_id, key=DROPPED_PARAMS, value_json=json.dumps(kept)))
            else:
                attr.value_json = json.dumps(kept)
    log.warning("Failed trial(s) %s drew %s from another kind of distribution than this "
                "search space: Optuna forgets those draws (kept in each trial's %s), so the "
                "study goes on", ", ".join(map(str, numbers)), ", ".join(names), DROPPED_PARAMS)
    return numbers


def fail_batch(study, batch, error: BaseException) -> None:
    """The launcher could not run these trials' jobs: they failed (queued again they would
    fail again, in every re-run)."""
    from optuna.trial import TrialState

    done = []
    for trial in batch:
        try:
            study.tell(trial, state=TrialState.FAIL)
            done.append(trial.number)
        except Exception:  # told already, or failed by another process
            pass
    if done:
        log.error("Trial(s) %s failed: the launcher could not run their job (%s: %s)",
                  ", ".join(map(str, done)), type(error).__name__, first_line(str(error)))


def counted_trials(study) -> Tuple[int, int]:
    """(trials that count toward n_trials, of which still waiting to be asked for)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if not (t.state == TrialState.FAIL and (
        t.system_attrs.get(REQUEUED) or t.system_attrs.get(DROPPED)))]
    return len(counted), sum(t.state == TrialState.WAITING for t in counted)


class Heartbeat:
    """Writes the time into each trial this process runs, every ``interval`` seconds, so other
    processes sharing the study can tell a live trial from one whose process died."""

    def __init__(self, study, interval: float):
        self.study, self.interval = study, interval
        self.trial_ids: List[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in list(self.trial_ids):
                try:
                    self.study._storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
                except Exception:  # finished meanwhile, or the storage hiccuped: next beat
                    pass


# ---------------------------------------------------------------------------------------------
# The loop

class OptunaSearch:
    """What the Hydra sweeper plugin runs: ask, launch, tell, until the study is full."""

    def __init__(self, settings, config, launcher, sweep_dir: Path):
        self.s, self.config, self.launcher = settings, config, launcher
        self.sweep_dir = sweep_dir.absolute()
        self.metric = str(config.optimized_metric)
        self.direction = direction(settings.direction, self.metric)  # warns once, here
        self.job_idx = 0
        self.texts: Dict[str, Dict[tuple, str]] = {}  # run() fills it (_space)
        self.storage = None

    def open(self):
        """Opens (or creates) the study; returns (study, created, where it lives)."""
        seed = None if self.s.seed is None else int(self.s.seed)
        with first_open_lock(self.s.storage, self.sweep_dir):
            self.storage, where = storage_for(self.s.storage, self.sweep_dir)
            try:
                study, created = open_study(self.storage, str(self.s.study_name), self.direction,
                                            self.metric, seed, self.s.sampler, self.sweep_dir)
            except ConfigError:
                raise
            except Exception as e:  # a journal is first read here: a corrupt one fails here
                raise ConfigError(f"hydra.sweeper.storage={self.s.storage or where}: cannot "
                                  f"open it as an Optuna storage ({type(e).__name__}: "
                                  f"{first_line(str(e))})") from None
        return study, created, where

    def run(self, arguments: List[str]) -> None:
        space, fixed, _, self.texts = _space(dict(self.s.params or {}), arguments)
        study, created, where = self.open()
        check_space_fits(study, space)  # before anything is changed: a refusal changes nothing
        drop_queued_misfits(study, space)
        if forget_failed_draws(study, space, self.storage, where):
            study = optuna_reload(study, self.storage)  # this process cached the old draws
        before, _ = counted_trials(study)
        log.info("Optuna study %s in %s: %s %s, %s sampler, %d of %d trials there already%s",
                 study.study_name, where, self.direction, self.metric, self.s.sampler, before,
                 self.s.n_trials, "" if created else " (joined)")
        log.info("Other processes join this search with: hydra.sweeper.storage=%s "
                 "hydra.sweeper.study_name=%s", where, study.study_name)
        requeue_stale_trials(study, self.sweep_dir, self.s.stale_after_s)
        fixed_overrides = list(fixed.values())
        with Heartbeat(study, self.s.heartbeat_s) as heartbeat:
            while True:
                counted, waiting = counted_trials(study)
                room = max(0, int(self.s.n_trials) - counted) + waiting
                if room == 0:
                    break
                batch = self._ask(study, space, min(room, int(self.s.n_jobs)))
                heartbeat.trial_ids = [t._trial_id for t in batch]
                # Trials with the same parameters share a job folder: one job runs, its twins
                # are told its result (two jobs at once in one folder would collide).
                first: Dict[tuple, Any] = {}
                for trial in batch:
                    first.setdefault(tuple(sorted(trial.params.items())), trial)
                launched = list(first.values())
                overrides = [fixed_overrides + trial_overrides(t.params, self.texts)
                             for t in launched]
                try:
                    returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
                except (KeyboardInterrupt, SystemExit):
                    # Stopped (Ctrl-C, SIGTERM): hand the batch back now, not after
                    # stale_after_s, so the other processes can run it.
                    requeue(study, [t.number for t in batch], "the sweep was stopped")
                    raise
                except Exception as e:
                    # The launcher could not run the jobs: a failure, not a stop.
                    fail_batch(study, batch, e)
                    raise
                self.job_idx += len(launched)
                jobs = dict(zip((t.number for t in launched), returns))
                for trial in batch:
                    twin = first[tuple(sorted(trial.params.items()))]
                    self._tell(study, trial, jobs[twin.number])
                heartbeat.trial_ids = []
                requeue_stale_trials(study, self.sweep_dir, self.s.stale_after_s)
        self._write_results(study, where)

    def _ask(self, study, space, n: int):
        batch = []
        for _ in range(n):
            try:
                trial = study.ask(space)
            except ValueError as e:  # Optuna: a parameter's distribution changed
                raise ConfigError(f"the search space does not fit study {study.study_name} "
                                  f"({first_line(str(e))}): search the study's space again, or start "
                                  f"another study (hydra.sweeper.study_name)") from None
            storage = study._storage
            storage.set_trial_system_attr(trial._trial_id, OWNER, owner_tag(self.sweep_dir))
            storage.set_trial_system_attr(trial._trial_id, HEARTBEAT, time.time())
            batch.append(trial)
        return batch

    def _tell(self, study, trial, job) -> None:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        value = None
        if job.status == JobStatus.COMPLETED:
            value = job.return_value
        job_dir = _job_dir(job)
        if job_dir:
            trial.set_user_attr(JOB_DIR, job_dir)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number):
            study.tell(trial, number)
            log.info("Trial %d: %s %.4f", trial.number, self.metric, number)
        else:
            study.tell(trial, state=TrialState.FAIL)
            log.warning("Trial %d failed (its job folder: %s)", trial.number, job_dir)

    def _write_results(self, study, where: str) -> None:
        import yaml
        from optuna.trial import TrialState

        from .engine.trial import write_text_atomic

        trials = study.get_trials(deepcopy=False)
        requeued = [t for t in trials if t.system_attrs.get(REQUEUED)]
        dropped = [t for t in trials if t.system_attrs.get(DROPPED)]
        states = {s.name.lower(): sum(t.state == s and t not in requeued and t not in dropped
                                      for t in trials)
                  for s in TrialState}
        states["requeued"] = len(requeued)  # failed with their process, run again
        states["dropped"] = len(dropped)  # queued outside the search space, never run
        results: Dict[str, Any] = {
            "study_name": study.study_name, "storage": where, "direction": self.direction,
            "optimized_metric": self.metric,
            "trials": {k: v for k, v in states.items() if v},
        }
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete:
            best = study.best_trial
            results.update(best_value=float(best.value), best_params=dict(best.params),
                           best_trial=best.number, best_job_dir=best.user_attrs.get(JOB_DIR))
            log.info("Best of the study: trial %d, %s %.4f, %s", best.number, self.metric,
                     best.value, " ".join(trial_overrides(best.params, self.texts)))
        else:
            log.warning("No trial of study %s has finished yet", study.study_name)
        write_text_atomic(self.sweep_dir / "optimization_results.yaml",
                          yaml.safe_dump(results, sort_keys=False))


def optuna_reload(study, storage):
    """The study again, through a fresh cache of the storage's trials."""
    import optuna

    sampler = study.sampler
    study = optuna.load_study(study_name=study.study_name, storage=storage)
    study.sampler = sampler
    return study


def _job_dir(job) -> Optional[str]:
    """The folder a launched job wrote to (its Hydra output dir; the working dir is the cwd)."""
    try:
        return str(job.hydra_cfg.hydra.runtime.output_dir)
    except Exception:
        return None
