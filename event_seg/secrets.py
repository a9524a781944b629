"""Keeps secrets out of everything a run writes (config dumps, tracker configs, checkpoints).

A value counts as secret when it is the value of an environment variable whose name looks like
one (``WANDB_API_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*PASSWORD*``, ...). Such values are replaced by
``***`` wherever they appear inside a string of the resolved config, e.g. when a config
interpolates ``${oc.env:MY_TOKEN}``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE|SESSION)",
                         re.IGNORECASE)
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would redact half the config
MASK = "***"


def secret_values(environ: Mapping[str, str] = os.environ) -> list:
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)  # longest first: no partial leftovers


def redact(obj: Any, secrets: Iterable[str] = None) -> Any:
    """A copy of a plain container (dicts, lists, scalars) with every secret value masked."""
    secrets = list(secret_values() if secrets is None else secrets)
    if not secrets:
        return obj

    def walk(x):
        if isinstance(x, str):
            for s in secrets:
                if s in x:
                    x = x.replace(s, MASK)
            return x
        if isinstance(x, dict):
            return {walk(k): walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        return x

    return walk(obj)
