"""``event-seg-prepare [overrides]``

Packs every split into the prepared cache (decoded frames and labels, window events):

    event-seg-prepare dataset=event_scapes dataset.root=/data/EventScape

Takes the same overrides as training; training with the same dataset settings then reads the
packed files instead of decoding PNGs and event files (the same samples; a file changed since
is read raw again). Nothing is written into outputs/: the cache goes to
``<paths.cache_dir>/packed/<settings hash>/<split folder>/``.
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
    """Packs every split into the prepared cache; returns {split: counts}."""
    from . import config as _config
    from .data.build import resolve_root, split_dataset
    from .data.packed_cache import PackedCache

    _config.validate(cfg)
    dataset_cfg = cfg.dataset
    if dataset_cfg.get("_target_"):
        from .errors import ConfigError

        # The cache keys each sample by the files it was read from (CompactReader.sources), which
        # a reader of your own need not say: training reads such a dataset raw, always.
        raise ConfigError(f"dataset._target_={dataset_cfg._target_}: the prepared cache holds "
                          f"the built-in formats only; a dataset read by your own reader is "
                          f"read raw in training (nothing to prepare)")
    root = resolve_root(dataset_cfg, cfg.paths.cache_dir, progress=cfg.trainer.progress_bar)
    cache = PackedCache(cfg.paths.cache_dir, dataset_cfg, root)
    done, packed_folders = {}, {}
    for split, folder in dataset_cfg.splits.items():
        if folder is None:
            continue
        target = cache.split_dir(split)
        if target in packed_folders:  # val and test often share a folder: packed once
            done[split] = done[packed_folders[target]]
            continue
        reader, _ = split_dataset(dataset_cfg, split, root / folder, transform=None)
        done[split] = cache.write_split(split, reader, num_workers=cfg.trainer.num_workers,
                                        progress=cfg.trainer.progress_bar,
                                        skip_corrupt=dataset_cfg.skip_corrupt)
        packed_folders[target] = split
    for split, counts in done.items():
        skipped = (f", {counts['skipped']} unreadable left out (dataset.skip_corrupt)"
                   if counts.get("skipped") else "")
        print(f"{split}: {counts['samples']} samples ({counts['raw_events']} with raw events, "
              f"{counts['dense_events']} with a float16 representation), "
              f"{counts['bytes'] / 2 ** 20:.1f} MiB{skipped}")
    print(f"prepared cache: {cache.dir}")
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

    from .launch import one_line
    from .train import CONFIG_DIR

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        prepare(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        # The one line training gives (an unknown key with its did-you-mean, ...).
        print(f"error: {' '.join(one_line(e).split())}", file=sys.stderr)
        return 2
    except EventSegError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a cache folder that cannot be written
        print(f"error: {e.strerror or e}: {e.filename or ''} (check paths.cache_dir)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
