"""What ``main()`` settles before Hydra runs a job: the command is sound, and its folder is ours.

One compose of the command, with a placeholder timestamp, serves three ends:

- Hydra's own errors (an unknown group option, a value of the wrong type, a key the schema does
  not have, with or without ``+``) become one line naming the key and the valid options;
- ``trial_timestamp=latest`` finds the newest run of the same name (latest.py);
- the run folder (a sweep's folder for ``-m``) is claimed before Hydra writes into it: a fresh
  run never shares a folder with another one started in the same second (its timestamp gets a
  ``_2`` suffix), and resuming a folder that a live process holds is refused.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .errors import ConfigError

KEY = "trial_timestamp"
PLACEHOLDER = "TRIAL-TIMESTAMP-PLACEHOLDER"
TIMESTAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"
# Flags after which Hydra prints or inspects instead of running a job.
INFO_FLAGS = ("--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--resolve",
              "--shell-completion", "-sc", "--package", "-p")
# Of those, the ones whose printout is about Hydra, not this command's config: Hydra composes
# no primary config for them, so the command's overrides (and ours) are neither checked nor added.
HYDRA_ONLY_FLAGS = ("--hydra-help", "--shell-completion", "-sc")


def is_sweep(argv: List[str]) -> bool:
    return any(a in ("-m", "--multirun") or a.startswith("hparams_search=") for a in argv[1:])


def runs_a_job(argv: List[str]) -> bool:
    return not any(a in INFO_FLAGS or a.startswith("--cfg=") for a in argv[1:])


# Hydra's modes, of which a command takes one (Hydra raises a bare ValueError for two).
MODE_FLAGS = {"-r": "--run", "--run": "--run", "-m": "--multirun", "--multirun": "--multirun",
              "-c": "--cfg", "--cfg": "--cfg", "-i": "--info", "--info": "--info",
              "-sc": "--shell-completion", "--shell-completion": "--shell-completion"}


def check_one_mode(argv: List[str]) -> None:
    modes = list(dict.fromkeys(MODE_FLAGS[a.split("=", 1)[0]] for a in argv[1:]
                               if a.split("=", 1)[0] in MODE_FLAGS))
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot be combined: give one of --run, "
                          f"--multirun, --cfg, --info, --shell-completion")


def hydra_only(argv: List[str]) -> bool:
    return any(a in HYDRA_ONLY_FLAGS or a.startswith("--shell-completion=") for a in argv[1:])


def overrides_of(argv: List[str]) -> List[str]:
    return [a for a in argv[1:] if ("=" in a or a.startswith("~")) and not a.startswith("-")]


def given_timestamp(argv: List[str]) -> Optional[str]:
    values = [a.split("=", 1)[1] for a in overrides_of(argv) if a.lstrip("+").split("=", 1)[0] == KEY]
    return values[-1] if values else None


def with_timestamp(argv: List[str], timestamp: str) -> List[str]:
    """``argv`` with every ``trial_timestamp=`` replaced, or one added beside the overrides."""
    if given_timestamp(argv) is not None:
        return [f"{KEY}={timestamp}" if a in overrides_of(argv)
                and a.lstrip("+").split("=", 1)[0] == KEY else a for a in argv]
    return insert_override(argv, f"{KEY}={timestamp}")


def insert_override(argv: List[str], override: str) -> List[str]:
    """``argv`` with ``override`` right after the command's last override, or, when it has
    none, right after the program name. argparse takes the overrides as one run of positional
    arguments, so one put after ``--cfg job`` would be refused, and one put after a bare
    ``--info`` would be taken for its argument."""
    where = max((i + 1 for i, a in enumerate(argv) if i and "=" in a and not a.startswith("-")),
                default=1)
    return [*argv[:where], override, *argv[where:]]


def compose_command(argv: List[str], config_dir: str):
    """The command's config (with Hydra's node) at a placeholder timestamp, checked. A sweep
    composes with its swept keys left out (they take several values, and none names the sweep
    folder); each swept value is then checked on its own. Every error is one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _compose_and_check(argv, config_dir)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        # ValueError: Hydra's `group=null` on the command line, among others.
        raise ConfigError(one_line(e)) from None


def _compose_and_check(argv: List[str], config_dir: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .config import validate

    overrides = [a for a in overrides_of(argv) if a.lstrip("+~").split("=", 1)[0] != KEY]
    parsed = OverridesParser.create().parse_overrides(overrides)
    old_sampler = [o.key_or_group for o in parsed if o.key_or_group.startswith("hydra.sweeper.sampler.")
                   or o.key_or_group.startswith("hydra/sweeper/sampler")]
    if old_sampler:  # hydra-optuna-sweeper's settings, which our sweeper replaced
        raise ConfigError(f"{old_sampler[0]}: hydra.sweeper.sampler is a name now "
                          f"(tpe | gp | random | cmaes | qmc) and its seed is hydra.sweeper.seed")
    if is_sweep(argv):
        for o in parsed:
            if o.is_sweep_override() and o.key_or_group.startswith("hydra."):
                value = o.input_line.split("=", 1)[1]
                key = o.key_or_group.rsplit("params.", 1)[-1]
                raise ConfigError(
                    f"{o.key_or_group}={value} sweeps a setting of Hydra's own; give the search "
                    f"space on the command line as '{key}={value}' (it joins hydra.sweeper.params)")
        _check_swept_options(parsed, config_dir)
        overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"{KEY}={PLACEHOLDER}"],
                      return_hydra_config=True)
    validate(cfg)  # before Hydra makes the run folder; run() checks the final config again
    if runs_a_job(argv):  # not for --cfg and the other printouts: it imports torch
        from .models import check_model

        check_model(cfg)  # the encoder name; a dry forward pass at the configured size
    if str(cfg.hydra.sweeper.get("_target_", "")).startswith("hydra_plugins.event_seg_sweeper"):
        from .optuna_search import check_settings

        check_settings(cfg.hydra.sweeper, cfg.optimized_metric, [o.input_line for o in parsed],
                       cfg=cfg)
    if is_sweep(argv):
        _check_swept_values(parsed, cfg, config_dir)
        _check_slurm_is_here(cfg)
    if not run_folder_pattern(cfg, is_sweep(argv)).strip():
        raise ConfigError("hydra.run.dir / hydra.sweep.dir is empty: a run needs a folder of "
                          "its own (leave them at their defaults, or name a folder)")
    return cfg


def _check_slurm_is_here(cfg) -> None:
    """submitit's SLURM executor refuses to start without ``srun`` on PATH (and submits with
    ``sbatch``): say so before the sweep folder exists, not in a traceback after it."""
    import shutil

    target = str(cfg.hydra.launcher.get("_target_", ""))
    if not target.startswith("hydra_plugins.hydra_submitit_launcher") or \
            not target.endswith("SlurmLauncher"):
        return
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        choice = cfg.hydra.runtime.choices.get("hydra/launcher", "submitit_slurm")
        raise ConfigError(f"hydra/launcher={choice} submits jobs with SLURM, and "
                          f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on "
                          f"PATH here: run the sweep on a SLURM login node, or use "
                          f"hydra/launcher=submitit_local (the same machinery, on this machine) "
                          f"or joblib")


def _check_swept_options(parsed, config_dir: str) -> None:
    """``-m model=unet,nope``: each swept option of a config group must exist (composing the
    sweep's other keys alone would not see it)."""
    folders = _config_folders(parsed, config_dir)
    if folders is None:
        return  # a pkg:// search path: its options cannot be listed here; Hydra checks them
    for o in parsed:
        groups = [f / o.key_or_group for f in folders if (f / o.key_or_group).is_dir()]
        if not o.is_sweep_override() or "." in o.key_or_group or not groups:
            continue
        try:
            values = list(o.sweep_string_iterator())
        except Exception:  # ranges, intervals: not options of a group
            continue
        options = sorted({p.stem for group in groups for p in group.glob("*.yaml")})
        for value in values:
            if value not in options:
                raise ConfigError(f"{o.key_or_group}={value} is not an option of "
                                  f"{o.key_or_group}; choose one of: {', '.join(options)}")


def _config_folders(parsed, config_dir: str):
    """conf/ and the folders ``hydra.searchpath=[file://...]`` adds (your own model or dataset
    configs), or None when a search path cannot be listed from here."""
    folders = [Path(config_dir)]
    for o in parsed:
        if o.key_or_group != "hydra.searchpath":
            continue
        value = o.value()
        for entry in (value if isinstance(value, list) else [value]):
            entry = str(entry)
            if not entry.startswith("file://"):
                return None
            folders.append(Path(entry[len("file://"):]).expanduser())
    return folders


# Besides model.*, the keys that change the model or its input: a swept value of one gets the
# command check's dry forward pass too (models.check_model).
MODEL_SHAPING = ("dataset.height", "dataset.width", "dataset.modality", "dataset.representation",
                 "dataset.num_bins", "dataset.event_channels", "dataset.class_names",
                 "trainer.batch_size")


def _check_swept_values(parsed, cfg, config_dir: str) -> None:
    """``-m trainer.epochs=1,abc`` or ``-m trainer.bogus=1,2``: each value of a swept key is
    set on the composed config and checked like a single run's, so a bad one is one line
    before any job starts (Hydra would report it after making the sweep folder, in 7 lines).
    Ranges and intervals (Optuna's search space) are left to the sweeper."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .config import validate

    for o in parsed:
        key = o.key_or_group
        if (not o.is_sweep_override() or key.startswith("hydra")
                or ("." not in key and (Path(config_dir) / key).is_dir())):
            continue
        try:
            values = list(o.sweep_iterator())
        except Exception:
            continue
        for value in values:
            variant = cfg.copy()
            try:
                OmegaConf.update(variant, key, value, merge=True, force_add=o.is_add())
            except OmegaConfBaseException as e:
                raise ConfigError(one_line(e)) from None
            validate(variant)
            if key.split(".")[0] == "model" or key in MODEL_SHAPING:
                from .models import check_model

                check_model(variant)


def one_line(error: Exception) -> str:
    """Hydra's 7-12 line composition errors as one line naming the key and the options."""
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, option = (error.missing_cfg_file or "").rpartition("/")
        if not group:  # `model=`: the file asked for is the group itself
            group, option = option, ""
        return (f"{group}={option or '(nothing)'} is not an option of {group}; choose one of: "
                f"{', '.join(sorted(error.options))}")
    cause = error.__cause__ or error.__context__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if first.startswith("Could not override '") and "To append" in str(error):
        from .config import unknown_key_message

        return unknown_key_message([first.split("'")[1]])
    for candidate in (error, cause):
        full_key = getattr(candidate, "full_key", None)
        if full_key:
            from omegaconf.errors import ConfigAttributeError, ConfigKeyError

            if isinstance(candidate, (ConfigKeyError, ConfigAttributeError)):
                from .config import unknown_key_message

                return unknown_key_message([full_key])
            return f"{full_key}: {str(candidate).splitlines()[0].strip()}"
    return " ".join(lines[:2])


def run_folder_pattern(cfg, sweep: bool) -> str:
    """Where this command's job (or sweep) writes, with PLACEHOLDER for the timestamp."""
    return str(cfg.hydra.sweep.dir if sweep else cfg.hydra.run.dir)


def claim_folder(pattern: str, timestamp: Optional[str],
                 now: Callable[[], datetime.datetime] = datetime.datetime.now,
                 until_started: bool = False) -> str:
    """Locks the folder for ``timestamp`` (a named trial: refused when another process holds
    it) or, for a fresh run (``timestamp`` None), for a new timestamp whose folder no one has
    used: the second of two runs started in the same second gets ``<time>_2``. Returns the
    timestamp. The lock lives as long as this process (folder_lock.py); ``until_started``: a
    new folder whose run fails before training is removed at exit."""
    from .engine import folder_lock

    if timestamp is not None or PLACEHOLDER not in pattern:
        chosen = timestamp or now().strftime(TIMESTAMP_FORMAT)
        folder_lock.hold(Path(pattern.replace(PLACEHOLDER, chosen)), remove_if_unused=True,
                         remove_unless_started=until_started)
        return chosen
    base = now().strftime(TIMESTAMP_FORMAT)
    for n in range(1, 1000):
        candidate = base if n == 1 else f"{base}_{n}"
        folder = Path(pattern.replace(PLACEHOLDER, candidate))
        if folder.exists() and not folder_lock.is_unused(folder):
            continue  # used by an earlier run, even a finished one
        try:
            folder_lock.hold(folder, remove_if_unused=True, remove_unless_started=until_started)
        except folder_lock.FolderInUse:
            continue  # taken a moment ago by a run started in the same second
        if not folder_lock.is_unused(folder):
            folder_lock.release(folder)  # it wrote and ended between our two looks
            continue
        return candidate
    raise ConfigError(f"no free run folder for {pattern.replace(PLACEHOLDER, base)}_N")


def settle(argv: List[str], config_dir: str, main_rank: bool,
           agree: Callable[[str], str] = lambda ts: ts) -> Tuple[List[str], Optional[str]]:
    """Checks the command and claims its folder; returns ``argv`` with a concrete timestamp,
    and the sweep's folder for a multirun (None for a single run).

    Under torchrun only rank 0 claims; ``agree`` hands its timestamp to the other ranks.
    """
    given = given_timestamp(argv)
    check_one_mode(argv)
    if hydra_only(argv):
        return argv, None
    if not runs_a_job(argv):
        # --cfg job, --info, --resolve ...: Hydra prints the config this command composes, so
        # it gets the same check as a run; a pinned timestamp keeps the printout concrete.
        # trial_timestamp=latest is shown as the run it resumes (or refused as the run would).
        cfg = compose_command(argv, config_dir)
        if given == "latest":
            return with_timestamp(argv, _latest(cfg, is_sweep(argv))), None
        return (argv if given else with_timestamp(argv, datetime.datetime.now().strftime(
            TIMESTAMP_FORMAT))), None
    cfg = compose_command(argv, config_dir)
    sweep = is_sweep(argv)
    pattern = run_folder_pattern(cfg, sweep)
    if given == "latest":
        given = _latest(cfg, sweep)
    # A single run's new folder goes again when its start fails; a sweep's folder holds its
    # jobs' records (job_status.json, the summary) whatever they did.
    if given is None:
        given = agree(claim_folder(pattern, None, until_started=not sweep) if main_rank else "")
    elif main_rank:
        claim_folder(pattern, given, until_started=not sweep)
    return with_timestamp(argv, given), (pattern.replace(PLACEHOLDER, given) if sweep else None)


def _latest(cfg, sweep: bool) -> str:
    from .latest import latest_timestamp

    return latest_timestamp(run_folder_pattern(cfg, sweep), sweep, run_name=str(cfg.run_name))
