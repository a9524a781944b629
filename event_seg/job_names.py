"""Names of multirun job folders (and the tracker runs that follow them).

A sweep job is identified by the values it sweeps, not by its job number: re-running a sweep with
one more value (``optimizer.lr=1e-3,3e-4``, then ``optimizer.lr=1e-2,1e-3,3e-4``) shifts the job
numbers, but each finished job finds its own folder again and is skipped, and its W&B run id
(derived from this name, see :func:`event_seg.loggers.wandb.wandb_run_id`) stays the same.
"""

from __future__ import annotations

import hashlib

# Folder names stay well under the 255-byte limit of common filesystems (counted in UTF-8
# bytes); a longer set of overrides keeps a readable prefix and a hash of the whole name. 150
# keeps an Optuna trial of conf/hparams_search/optuna.yaml (four values, floats written out in
# full: about 130 bytes) whole.
MAX_NAME_BYTES = 150
HASH_CHARS = 10


def job_dir_name(override_dirname, model_name) -> str:
    """A multirun job's folder (and tracker display name): its swept overrides
    (``model=fpn,optimizer.lr=0.0003``, from ``hydra.job.override_dirname``, whose exclude_keys
    leave out the settings all jobs share), or the model name for a job without any.

    Two jobs of one sweep with identical overrides (``a=1,1``, or Optuna proposing the same point
    twice) share a folder: the later one finds the earlier one's ``metrics.json`` and is skipped,
    returning the stored value. That is deterministic and what a re-run does anyway; the job
    number no longer tells them apart because it moves when the sweep changes. (Run in parallel,
    e.g. with hydra/launcher=joblib, the later one finds the folder in use instead.)
    """
    # "/" in a value would make a subfolder.
    name = str(override_dirname or "").replace("/", "-") or str(model_name)
    return shorten(name)


def shorten(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name`` itself when it fits in ``max_bytes`` (UTF-8), else a prefix of it, ``-`` and a
    stable hash (sha1, not Python's salted hash()) of the whole name."""
    encoded = name.encode("utf-8")
    if len(encoded) <= max_bytes:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:HASH_CHARS]
    # Cut by bytes, dropping a character split in two by the cut.
    prefix = encoded[:max_bytes - HASH_CHARS - 1].decode("utf-8", errors="ignore")
    return f"{prefix}-{digest}"
