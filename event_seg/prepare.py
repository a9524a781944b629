"""``event-seg-prepare [overrides]``

Precomputes the event tensors of every split:

    event-seg-prepare dataset=event_scapes dataset.root=/data/EventScape dataset.num_bins=10

Takes the same overrides as training; training with the same dataset settings then reads the
tensors instead of binning raw events (and gives the same tensors). Nothing is written into
outputs/: the tensors go to ``<paths.cache_dir>/representations/<settings hash>/``.
"""

from __future__ import annotations

import logging
import sys

from .errors import EventSegError

log = logging.getLogger("event_seg.prepare")


def usage() -> str:
    return "usage: " + (__doc__ or "event-seg-prepare [overrides]").replace(
        "``", "").strip() + "\n"


def prepare(cfg) -> dict:
    """Fills the cache for every split; returns {split: samples}."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from . import config as _config
    from .data import build_data
    from .data.build import RAW_EVENT_FORMATS

    _config.validate(cfg)
    if cfg.dataset.format not in RAW_EVENT_FORMATS:
        print(f"nothing to prepare: {cfg.dataset.name} ships its event tensors precomputed")
        return {}
    data = build_data(cfg.dataset, cfg.trainer, cfg.paths.cache_dir, seed=cfg.seed, prepare=True)
    done = {}
    for split, loader in data.loaders.items():
        dataset = loader.dataset
        # One sample at a time, in parallel workers; the samples themselves are dropped.
        reader = DataLoader(dataset, batch_size=None, shuffle=False,
                            num_workers=cfg.trainer.num_workers, collate_fn=lambda s: None)
        for _ in tqdm(reader, total=len(dataset), desc=f"prepare {split}", unit="sample"):
            pass
        done[split] = len(dataset)
    cache = loader.dataset.cache
    print(f"prepared {sum(done.values())} event tensors {done} in {cache.dir}")
    return done


def main(argv=None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if "-h" in overrides or "--help" in overrides:
        sys.stdout.write(usage())
        return 0
    options = [arg for arg in overrides if arg.startswith("-")]
    if options:  # Hydra would take it for an override and fail with a parser error
        print(f"error: unknown option {options[0]}: event-seg-prepare takes key=value overrides "
              f"only (see event-seg-prepare --help)", file=sys.stderr)
        return 2
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .train import CONFIG_DIR

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        prepare(cfg)
    except (HydraException, OmegaConfBaseException, EventSegError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
