"""Your own model or reader, named by ``_target_`` in the config (the Hydra way).

``model._target_`` names any ``nn.Module`` class (or a function returning one), built as
``Target(in_channels=..., classes=..., **model.kwargs)``; ``dataset._target_`` names a reader
class, built once per split as ``Target(split_dir=..., split=..., transform=..., representation=...,
num_bins=..., normalize_events=..., label_map=..., ignore_index=..., **dataset.kwargs)`` (see
docs/custom_model_and_dataset.md). A target's own arguments live in ``kwargs``, so the schema
keeps refusing a misspelt built-in key (``model.encoder_nmae``) while ``kwargs`` is checked
against the target's signature here, when the config is validated: a target that cannot be
imported, that does not take the arguments event_seg passes, or that does not take a key of
``kwargs`` is one line naming the key, before any data is built or folder written.

Imported lazily by config.validate: importing a target imports the user's module (and torch).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable, Dict, Iterable, Optional

from .errors import ConfigError, EventSegError

# What event_seg passes to each kind of target, besides the target's own ``kwargs``.
MODEL_ARGUMENTS = ("in_channels", "classes")
READER_ARGUMENTS = ("split_dir", "split", "transform", "representation", "num_bins",
                    "normalize_events", "label_map", "ignore_index")
DOC = "docs/custom_model_and_dataset.md"


def locate(path: str, key: str) -> Callable:
    """The object ``path`` (``package.module.Name``) names, or a one-line ConfigError.

    The current folder is searched last, as ``python -m`` would search it first: the console
    scripts (``event-seg-train``, ``event-seg-evaluate``) then find ``examples.tiny_net`` from the
    repository root too, and an installed package of the same name still wins."""
    path = str(path).strip()
    parts = path.split(".")
    if not path or not all(p.isidentifier() for p in parts) or len(parts) < 2:
        raise ConfigError(f"{key}={path!r} is not a dotted import path such as "
                          f"examples.tiny_net.TinyNet")
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)
    # The longest importable module prefix, then attributes: ``pkg.mod.Class.factory`` works.
    module, error = None, None
    for split in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:split])
        try:
            module = importlib.import_module(name)
            break
        except ModuleNotFoundError as e:
            # Only "this module does not exist" moves on to a shorter prefix; a module that
            # exists but fails to import its own dependencies is reported as it is.
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise ConfigError(f"{key}={path}: importing {name} failed: "
                                  f"{type(e).__name__}: {e}") from None
            error = e
        except Exception as e:  # SyntaxError, an exception at import time: the user's module
            raise ConfigError(f"{key}={path}: importing {name} failed: {type(e).__name__}: "
                              f"{_first_line(e)}") from None
    if module is None:
        raise ConfigError(f"{key}={path}: cannot import {parts[0]} ({error}); run from the folder "
                          f"that holds it or add that folder to PYTHONPATH")
    obj: Any = module
    for i, attr in enumerate(parts[split:], start=split):
        if not hasattr(obj, attr):
            if error is not None:  # the longer path was meant as a module: say that
                raise ConfigError(f"{key}={path}: cannot import {error.name} ({error}); run from "
                                  f"the folder that holds it or add that folder to PYTHONPATH")
            raise ConfigError(f"{key}={path}: {'.'.join(parts[:i])} has no attribute {attr!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ConfigError(f"{key}={path} is a {type(obj).__name__}, not a class or function")
    return obj


def check_signature(target: Callable, path: str, key: str, passed: Iterable[str],
                    kwargs: Dict[str, Any], kwargs_key: str) -> None:
    """``target(**passed, **kwargs)`` must bind: every argument event_seg passes and every key
    of ``kwargs`` has a parameter (or ``**kwargs`` takes it), and every parameter without a
    default gets a value."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return  # a builtin or C extension without a signature: the call itself will tell
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    shown = f"its arguments: {', '.join(named) or 'none'}"
    passed = list(passed)
    clash = sorted(set(passed) & set(kwargs))
    if clash:
        raise ConfigError(f"{kwargs_key}.{clash[0]}: event_seg passes {clash[0]} itself "
                          f"(from the dataset); remove it from {kwargs_key}")
    if not takes_any:
        refused = [n for n in passed if n not in named]
        if refused:
            raise ConfigError(
                f"{key}={path} does not take {', '.join(refused)} ({shown}); event_seg calls it "
                f"as {path.rsplit('.', 1)[-1]}({', '.join(a + '=...' for a in passed)}, "
                f"**{kwargs_key}): see {DOC}")
        unknown = [k for k in kwargs if k not in named]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], named, n=1)
            hint = f" (did you mean {kwargs_key}.{close[0]}?)" if close else ""
            raise ConfigError(f"{kwargs_key}.{unknown[0]}: {path} takes no argument "
                              f"{unknown[0]!r}{hint}; {shown}")
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               inspect.Parameter.KEYWORD_ONLY)
                and n not in passed and n not in kwargs]
    if required:
        raise ConfigError(f"{key}={path} needs {', '.join(required)}, which event_seg does not "
                          f"pass: set {kwargs_key}.{required[0]}=...")


def check_target(node, key_prefix: str, passed: Iterable[str]) -> Callable:
    """Locates ``<key_prefix>._target_`` and checks its signature; returns the target."""
    path = str(node.get("_target_"))
    target = locate(path, f"{key_prefix}._target_")
    check_signature(target, path, f"{key_prefix}._target_", passed, plain(node.get("kwargs")),
                    f"{key_prefix}.kwargs")
    return target


def build(node, key_prefix: str, **passed):
    """``Target(**passed, **kwargs)``; a ``_target_`` node inside ``kwargs`` (a backbone, a
    loss ...) is instantiated first by Hydra, so a target may take other objects."""
    from hydra.utils import instantiate

    target = check_target(node, key_prefix, passed)
    kwargs = node.get("kwargs")
    kwargs = instantiate(kwargs, _convert_="all") if kwargs else {}
    try:
        return target(**passed, **dict(kwargs))
    except EventSegError:
        raise  # a reader's own readable error (a missing folder, a corrupt file)
    except Exception as e:
        # Its constructor refused the values (width=0, a string for a number): one line that
        # names the target and what it was given, not the traceback from inside user code.
        raise ConfigError(f"{key_prefix}._target_={node.get('_target_')} could not be built "
                          f"with {key_prefix}.kwargs={dict(kwargs)}: {type(e).__name__}: "
                          f"{_first_line(e)}") from None


def plain(node) -> Dict[str, Any]:
    if node is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    return dict(OmegaConf.to_container(node, resolve=True)) if isinstance(node, DictConfig) \
        else dict(node)


def validate_targets(cfg) -> None:
    """Exactly one way to build the model (``model.arch`` or ``model._target_``) and the reader
    (``dataset.format`` or ``dataset._target_``), and each ``_target_`` importable with a
    signature that takes what event_seg passes and the keys of its ``kwargs``."""
    for group, builtin, names, passed in (
            ("model", "arch", "an smp architecture, e.g. Unet", MODEL_ARGUMENTS),
            ("dataset", "format", "event_scapes, ddd17 or dsec_semantic", READER_ARGUMENTS)):
        node = cfg[group]
        has_builtin, has_target = node.get(builtin) is not None, node.get("_target_") is not None
        if has_builtin and has_target:
            raise ConfigError(f"{group}.{builtin}={node[builtin]} and {group}._target_="
                              f"{node['_target_']} are both set: a {group} is built one way; "
                              f"pass {group}.{builtin}=null to build {node['_target_']}")
        if not has_builtin and not has_target:
            raise ConfigError(f"{group}: set {group}.{builtin} ({names}) or {group}._target_ "
                              f"(your own class, see {DOC})")
        if has_target:
            check_target(node, group, passed)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def described(node, builtin: str) -> Optional[str]:
    """``Unet`` or ``examples.tiny_net.TinyNet``: what builds this group, for log lines."""
    return node.get(builtin) or node.get("_target_")

