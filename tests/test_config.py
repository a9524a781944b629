"""Hydra composition of conf/ against the schemas in event_seg/config.py."""

from __future__ import annotations

from pathlib import Path

import pytest

import event_seg.config  # noqa: F401  (registers schema/train before Hydra composes)
from event_seg.config import ConfigError, validate

hydra = pytest.importorskip("hydra")
from hydra.errors import HydraException  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

CONF_DIR = (Path(__file__).resolve().parents[1] / "conf").resolve()
GROUPS = ("dataset", "model", "logger", "optimizer", "scheduler", "experiment", "debug")


def compose(overrides=()):
    with hydra.initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra.compose("train", overrides=list(overrides), return_hydra_config=True)


def options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


ALL_OPTIONS = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ has no yaml options"
    # The known presets are among them (guards the discovery itself).
    assert {"unet", "fpn", "deeplabv3plus"} <= set(options("model"))
    assert {"tensorboard", "none"} <= set(options("logger"))


def test_default_composes_and_validates():
    cfg = compose()
    validate(cfg)
    assert cfg.dataset.name == "synthetic"
    assert cfg.model.name == "unet"
    assert set(cfg.logger) == {"tensorboard"}
    assert cfg.optimizer.name == "adamw"
    assert cfg.scheduler.name == "poly"
    # Interpolations resolve (outside the hydra node, and the run dir with the hydra config).
    assert cfg.run_name.startswith("unet_")
    assert cfg.trial_timestamp in cfg.run_name
    assert cfg.hydra.run.dir == f"{cfg.paths.output_root}/{cfg.run_name}"
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    resolved = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    assert "${" not in str(resolved)


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_option_composes_and_validates(group, option):
    cfg = compose([f"{group}={option}"])
    validate(cfg)
    # Every typed leaf outside the hydra node resolves.
    assert isinstance(cfg.run_name, str) and cfg.run_name
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra")
    OmegaConf.to_container(OmegaConf.create(plain), resolve=True, throw_on_missing=True)
    assert cfg.hydra.runtime.choices[group] == option
    if group in ("model", "optimizer", "scheduler"):
        assert cfg[group].name == option
    if group == "logger":
        expected = {"none": set(), "wandb+tb": {"wandb", "tensorboard"}}.get(option, {option})
        assert set(cfg.logger) == expected


def test_non_default_options_combine():
    # One non-default option of every group at once (the per-option test covers each alone).
    models, opts, scheds = options("model"), options("optimizer"), options("scheduler")
    for i in range(max(len(models), len(opts), len(scheds))):
        model, opt, sched = models[i % len(models)], opts[i % len(opts)], scheds[i % len(scheds)]
        cfg = compose([f"model={model}", f"optimizer={opt}", f"scheduler={sched}",
                       "logger=none", "debug=smoke"])
        validate(cfg)
        assert (cfg.model.name, cfg.optimizer.name, cfg.scheduler.name) == (model, opt, sched)
        assert not cfg.logger and cfg.trainer.epochs == 2


def test_experiments_set_their_modality():
    expected = {"synthetic_rgb_only": "rgb", "synthetic_events_only": "events",
                "synthetic_fusion": "rgb+events"}
    for name, modality in expected.items():
        if name in options("experiment"):
            cfg = compose([f"experiment={name}", "model=fpn"])
            validate(cfg)
            assert cfg.dataset.modality == modality
            assert cfg.run_name.startswith("fpn_")


def test_debug_smoke_shrinks_the_run():
    cfg = compose(["debug=smoke"])
    validate(cfg)
    assert cfg.trainer.epochs == 2 and cfg.trainer.limit_batches == 2
    assert cfg.trainer.num_workers == 0
    assert cfg.dataset.height == 32 and cfg.dataset.width == 64


def test_logger_list_selection():
    cfg = compose(["logger=[tensorboard,none]"])
    validate(cfg)
    assert set(cfg.logger) == {"tensorboard"}
    assert cfg.logger.tensorboard._target_.endswith("TensorBoardLogger")
    cfg = compose(["logger=none"])
    assert not cfg.logger
    cfg = compose(["logger=[]"])
    assert not cfg.logger


def test_typed_override_is_converted():
    cfg = compose(["trainer.epochs=3", "optimizer.lr=0.5", "dataset.num_bins=7"])
    assert cfg.trainer.epochs == 3 and isinstance(cfg.trainer.epochs, int)
    assert cfg.optimizer.lr == 0.5
    assert cfg.dataset.num_bins == 7


def _error_text(exc: BaseException) -> str:
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def test_misspelt_key_is_rejected_naming_it():
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        compose(["trainer.epoch=3"])
    assert "trainer.epoch" in str(info.value)


def test_wrong_type_is_rejected_naming_the_key():
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        compose(["trainer.epochs=ten"])
    assert "trainer.epochs" in str(info.value)
    assert "ten" in _error_text(info.value)


def test_misspelt_nested_dataset_key_is_rejected():
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        compose(["dataset.synthetic.frames=3"])
    assert "dataset.synthetic.frames" in str(info.value)


def test_unknown_option_is_rejected_naming_it():
    with pytest.raises((HydraException, OmegaConfBaseException)) as info:
        compose(["model=nope"])
    msg = str(info.value)
    assert "model/nope" in msg or ("model" in msg and "nope" in msg)


def test_validate_rejects_bad_modality():
    cfg = compose(["dataset.modality=depth"])
    with pytest.raises(ConfigError, match=r"dataset\.modality") as info:
        validate(cfg)
    assert "depth" in str(info.value)


def test_validate_rejects_bad_representation():
    cfg = compose(["dataset.representation=voxels"])
    with pytest.raises(ConfigError, match=r"dataset\.representation"):
        validate(cfg)


@pytest.fixture(scope="module")
def default_cfg():
    return compose()


@pytest.mark.parametrize("key,value", [
    ("trainer.epochs", 0),
    ("trainer.batch_size", -1),
    ("dataset.num_bins", 0),
    ("dataset.height", 0),
    ("optimizer.lr", 0.0),
    ("trainer.num_workers", -1),
    ("trainer.device", "tpu"),
    ("trainer.precision", "fp64"),
    ("optimizer.name", "adam"),
    ("scheduler.name", "step"),
    ("model.arch", "UNet"),
    ("dataset.format", "dsec"),
    ("trainer.limit_batches", 0),
    ("dataset.ignore_index", -100),
    ("dataset.label_map", [0, 1, 300]),
])
def test_validate_names_the_bad_key(default_cfg, key, value):
    cfg = default_cfg.copy()
    OmegaConf.update(cfg, key, value)
    assert OmegaConf.select(cfg, key) == value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_validate_palette_must_match_class_names(default_cfg):
    cfg = default_cfg.copy()
    cfg.dataset.palette = [[0, 0, 0]]
    with pytest.raises(ConfigError, match=r"dataset\.palette"):
        validate(cfg)


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "auto"])
def test_validate_accepts_devices(default_cfg, device):
    cfg = default_cfg.copy()
    cfg.trainer.device = device
    validate(cfg)


def test_relative_dataset_and_cache_paths_are_stored_absolute(tmp_path, monkeypatch):
    from event_seg.config import make_paths_absolute

    monkeypatch.chdir(tmp_path)
    cfg = compose(["dataset=event_scapes", "dataset.root=data/EventScape", "paths.cache_dir=cache"])
    make_paths_absolute(cfg)
    assert cfg.dataset.root == str(tmp_path / "data" / "EventScape")
    assert cfg.paths.cache_dir == str(tmp_path / "cache")


@pytest.mark.parametrize("dataset", ["synthetic", "event_scapes", "dsec_semantic"])
def test_precomputed_is_refused_for_a_format_that_ships_raw_events(dataset):
    # These readers make the representation from raw events; only stored tensors are read as
    # they are (ddd17, or a reader of your own that returns `dense`).
    cfg = compose([f"dataset={dataset}", "dataset.representation=precomputed",
                   "dataset.event_channels=6"])
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("dataset.representation=precomputed")
    assert f"dataset.format={cfg.dataset.format} ships raw events" in message
    assert "dataset.format=ddd17" in message and "dataset._target_" in message
    assert "voxel_grid, histogram, time_surface, mdes" in message


def test_precomputed_stays_valid_for_ddd17():
    validate(compose(["dataset=ddd17"]))


@pytest.mark.parametrize("override,key", [
    ("dataset.augment.hflip=1.5", "dataset.augment.hflip"),
    ("dataset.augment.hflip=-0.1", "dataset.augment.hflip"),
    ("dataset.augment.affine_p=2", "dataset.augment.affine_p"),
    ("dataset.augment.photometric_p=1.5", "dataset.augment.photometric_p"),
    ("dataset.augment.scale=[0.9]", "dataset.augment.scale"),
    ("dataset.augment.scale=[0.9,1.1,1.2]", "dataset.augment.scale"),
    ("dataset.augment.scale=[0,1.1]", "dataset.augment.scale"),
    ("dataset.augment.scale=[1.2,0.9]", "dataset.augment.scale"),
    ("dataset.augment.rotate_deg=-5", "dataset.augment.rotate_deg"),
    ("dataset.augment.rotate_deg=400", "dataset.augment.rotate_deg"),
    ("dataset.augment.translate=-0.1", "dataset.augment.translate"),
    ("dataset.augment.translate=1.0", "dataset.augment.translate"),
])
def test_augment_settings_are_checked_naming_the_key(override, key):
    # Checked with or without the affine switched on: a setting that is wrong stays wrong.
    cfg = compose([override])
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert message.startswith(f"{key}=") and "\n" not in message


@pytest.mark.parametrize("override", ["augment=strong", "augment=none",
                                      "dataset.augment.scale=[1.0,1.0]",
                                      "dataset.augment.hflip=1.0", "dataset.augment.translate=0",
                                      # any angle: [-360, 360] covers the circle
                                      "dataset.augment.rotate_deg=360"])
def test_augment_settings_that_albumentations_takes_stay_valid(override):
    validate(compose([override]))


@pytest.mark.parametrize("override", [
    "dataset.representation=precomputed dataset.event_channels=6",
    "dataset.augment.hflip=1.5",
    "dataset.augment.scale=[0.9]",
])
def test_a_bad_dataset_setting_is_one_line_before_any_folder(override, tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "EVENT_SEG_CACHE": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([sys.executable, "-m", "event_seg.train", "debug=smoke", "logger=none",
                           f"paths.output_root={tmp_path / 'out'}", *override.split()],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dataset."), proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()
