"""``event-seg-export checkpoint=<path> [format=onnx|torchscript] [out=...] [height=H] [width=W]
[opset=N]``

Writes the model of a checkpoint as a file that runs without event_seg, and checks it before
saying so:

    event-seg-export checkpoint=outputs/unet_2026-11-29_10-00-00/checkpoints/best.pt
    event-seg-export checkpoint=outputs/unet_2026-11-29_10-00-00 format=torchscript

``checkpoint`` is a .pt file or a run folder (its checkpoints/best.pt, else last.pt). The model is
rebuilt from the config and dataset info stored in the checkpoint; when the checkpoint holds EMA
weights (trainer.ema.decay), those are exported: they are what validation and best.pt scored.

The exported model takes one float32 input ``[batch, channels, height, width]`` (any batch size;
height and width fixed, by default the dataset's training size) and returns the class scores
``[batch, classes, height, width]``. Before reporting success the command runs the exported file
(onnxruntime on the CPU for ONNX, the reloaded module for TorchScript) and PyTorch in eval mode on
random inputs of batch 1 and 3, and requires max|difference| <= 1e-4 * max(1, max|PyTorch|);
otherwise it writes nothing and exits non-zero with one line.

Options: ``format`` (onnx, the default, or torchscript); ``out`` (default <run folder>/export/
model.onnx or model.torchscript.pt); ``height`` and ``width`` (multiples of 32); ``opset``
(ONNX only; default: torch's). Next to the model, ``<out>.json`` records the input layout
(channel order, representation, normalisation), the class names and the check;
``event_seg.data.model_input.model_input(spec, rgb, events)`` builds one input from it with
numpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .engine.checkpoint import find_checkpoint
from .errors import CheckpointError, ConfigError, EventSegError

OWN_ARGS = ("checkpoint", "format", "out", "height", "width", "opset")
DEFAULT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
# max|exported - PyTorch| <= TOLERANCE * max(1, max|PyTorch|): float32 kernels of two runtimes
# (fused convolutions, other summation orders) differ by ~1e-5 relative on these networks.
TOLERANCE = 1e-4
# The export traces batch 2; checking batches 1 and 3 proves the batch axis is dynamic.
EXAMPLE_BATCH, CHECK_BATCHES = 2, (1, 3)
INPUT_NAME, OUTPUT_NAME = "input", "logits"
EXPORT_EXTRA = "pip install 'event_seg[export]' (in a checkout: pip install -e '.[export]')"


class ExportError(EventSegError, RuntimeError):
    """The export failed or the exported model does not reproduce PyTorch."""


def usage() -> str:
    return "usage: " + (__doc__ or "event-seg-export checkpoint=<path>").replace(
        "``", "").strip() + "\n"


def parse_arguments(argv: Sequence[str]) -> dict:
    """``key=value`` arguments, checked: the known keys only, integers where integers go."""
    args = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg.startswith("-") or not sep:
            raise ConfigError(f"unknown argument {arg}: event-seg-export takes key=value "
                              f"arguments only (see event-seg-export --help)")
        if key not in OWN_ARGS:
            close = difflib.get_close_matches(key, OWN_ARGS, n=1)
            hint = f"did you mean {close[0]}=?" if close else f"it takes {', '.join(OWN_ARGS)}"
            if "." in key and not close:  # a config key, as evaluate and training take them
                hint = (f"event-seg-export takes no config overrides (the checkpoint fixes the "
                        f"model and its input); {hint}")
            raise ConfigError(f"unknown argument {key}=: {hint}")
        args[key] = value
    if not args.get("checkpoint"):
        raise ConfigError("usage: event-seg-export checkpoint=<.pt file or run folder> "
                          "[format=onnx|torchscript] [out=...] [height=H] [width=W] [opset=N]")
    args.setdefault("format", "onnx")
    if args["format"] not in DEFAULT_FILES:
        raise ConfigError(f"format={args['format']} is not one of: {', '.join(DEFAULT_FILES)}")
    for key in ("height", "width", "opset"):
        if key in args:
            try:
                args[key] = int(args[key])
            except ValueError:
                raise ConfigError(f"{key}={args[key]} is not an integer") from None
    for key in ("height", "width"):
        if key in args and (args[key] <= 0 or args[key] % 32):
            raise ConfigError(f"{key}={args[key]} must be a positive multiple of 32 (the "
                              f"encoder's output stride)")
    if "opset" in args and args["format"] != "onnx":
        raise ConfigError("opset= applies to format=onnx only")
    return args


def default_output(checkpoint: Path, fmt: str) -> Path:
    parent = checkpoint.resolve().parent
    run_dir = parent.parent if parent.name == "checkpoints" else parent
    return run_dir / "export" / DEFAULT_FILES[fmt]


def load_model(checkpoint: Path):
    """The checkpoint's model in eval mode on the CPU, with the weights to export.

    Returns ``(model, cfg, info, state, ema)``: ``ema`` says the EMA weights were loaded."""
    from omegaconf import OmegaConf

    from .config import TrainConfig
    from .data.build import DatasetInfo
    from .engine.checkpoint import load_checkpoint
    from .models import build_model

    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{checkpoint} is not an event_seg checkpoint (it holds no model "
                              f"weights); pass checkpoints/best.pt or last.pt of a run")
    if not state.get("config") or not state.get("dataset_info"):
        raise CheckpointError(f"{checkpoint} holds no training config and dataset info (not "
                              f"written by event-seg-train)")
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), state["config"])
    cfg.model.encoder_weights = None  # every weight comes from the checkpoint
    # Only the fields this version knows: a checkpoint from another version may hold more.
    known = {f.name for f in dataclasses.fields(DatasetInfo)}
    info = DatasetInfo(**{k: v for k, v in state["dataset_info"].items() if k in known})
    ema = state.get("ema_model") is not None
    model = build_model(cfg.model, info)
    try:
        model.load_state_dict(state["ema_model"] if ema else state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{checkpoint}: the {'EMA ' if ema else ''}weights do not fit the "
                              f"model its config builds ({str(e).splitlines()[0][:200]})") from None
    return model.eval(), cfg, info, state, ema


# ---------------------------------------------------------------------------------------------
# The two formats: write to ``path``, return a function that runs the written file
# ---------------------------------------------------------------------------------------------

def write_onnx(model, example, path: Path, opset: Optional[int]) -> Tuple[Callable, dict]:
    try:
        import onnx
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (torch's exporter needs it; say so before exporting)
    except ImportError as e:
        raise ConfigError(f"format=onnx needs {e.name}: {EXPORT_EXTRA}") from None
    import torch

    try:
        # torch's default exporter (torch.export-based, dynamo=True since torch 2.9); the
        # batch is the one dynamic dimension. One file: these models are far below protobuf's
        # 2 GB limit, and a single file is what people copy around.
        with _quiet("torch.onnx", "onnxscript"):
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                              external_data=False, verbose=False)
    except Exception as e:  # the exporter's reasons are many; its first line names the op
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: "
                          f"{type(e).__name__}: {_first_line(e)}; try format=torchscript") from None
    proto = onnx.load(str(path), load_external_data=False)
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and written != opset:
        # Below its own opsets (18 in torch 2.14) the exporter converts down where onnx can,
        # and otherwise keeps its own version with only a log warning: the file decides.
        raise ExportError(f"opset={opset}: the exporter could not convert this model to opset "
                          f"{opset} and wrote opset {written}; choose a newer opset (or leave "
                          f"opset unset)")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"onnxruntime {ort.__version__} cannot load the exported model "
                          f"(opset {written}): {_first_line(e)}") from None
    batch_dim = session.get_inputs()[0].shape[0]
    if not isinstance(batch_dim, str):
        raise ExportError(f"the exported model's batch axis is fixed at {batch_dim}, not dynamic")

    def run(x):
        return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]

    return run, {"exporter": "torch.onnx.export (dynamo=True, torch.export-based)",
                 "opset": written, "runtime": f"onnxruntime {ort.__version__} "
                 f"(CPUExecutionProvider)"}


def write_torchscript(model, example, path: Path) -> Tuple[Callable, dict]:
    import torch

    with warnings.catch_warnings():
        # torch 2.14 marks TorchScript deprecated; asked for by name, it still works.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        with torch.no_grad():
            # check_trace reruns the same batch; the check below runs other batch sizes.
            traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x):
        with torch.no_grad():
            return loaded(x).numpy()

    return run, {"exporter": "torch.jit.trace", "runtime": "torch.jit.load"}


@contextlib.contextmanager
def _quiet(*names: str):
    """Holds back the exporters' warnings and tracebacks: this command checks the file it gets
    and reports the outcome (opset written, differences) in its own words."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def check(model, run: Callable, shape: Sequence[int]) -> List[dict]:
    """Runs PyTorch and the exported file on the same random inputs of each CHECK_BATCHES size;
    raises ExportError past the tolerance."""
    import torch

    generator = torch.Generator().manual_seed(0)
    results = []
    for batch in CHECK_BATCHES:
        x = torch.randn((batch, *shape), generator=generator)
        with torch.no_grad():
            ref = model(x).numpy()
        got = np.asarray(run(x))
        if got.shape != ref.shape:
            raise ExportError(f"at batch {batch} the exported model returns {list(got.shape)}, "
                              f"PyTorch {list(ref.shape)}")
        diff = float(np.abs(got.astype(np.float64) - ref).max())
        bound = TOLERANCE * max(1.0, float(np.abs(ref).max()))
        if not diff <= bound:  # NaN fails too
            raise ExportError(f"at batch {batch} the exported model differs from PyTorch by "
                              f"max|diff| {diff:.3g} > {bound:.3g} (= {TOLERANCE:g} x "
                              f"max(1, max|PyTorch|)); nothing was written")
        results.append({"batch": batch, "max_abs_diff": diff, "bound": bound})
    return results


def export(checkpoint, fmt: str = "onnx", out: Optional[str] = None,
           height: Optional[int] = None, width: Optional[int] = None,
           opset: Optional[int] = None) -> dict:
    """Exports, checks, then moves the file into place; returns what ``<out>.json`` holds."""
    checkpoint = find_checkpoint(Path(checkpoint))
    import torch

    from .data.model_input import input_spec
    from .engine.trial import write_text_atomic

    model, cfg, info, state, ema = load_model(checkpoint)
    height = int(height or cfg.dataset.height)
    width = int(width or cfg.dataset.width)
    out_path = Path(out).expanduser() if out else default_output(checkpoint, fmt)
    if out_path.is_dir():  # out=some/folder: the usual file name inside it
        out_path = out_path / DEFAULT_FILES[fmt]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shape = (info.input_channels, height, width)
    example = torch.randn((EXAMPLE_BATCH, *shape), generator=torch.Generator().manual_seed(1))

    # Written beside the target and renamed only once checked: a file at `out` always passed.
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        if fmt == "onnx":
            run, how = write_onnx(model, example, tmp, opset)
        else:
            run, how = write_torchscript(model, example, tmp)
        checked = check(model, run, shape)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)

    record = {
        "format": fmt, "file": out_path.name, "checkpoint": str(checkpoint),
        "epoch": int(state.get("epoch", 0)),
        "weights": "ema_model" if ema else "model", **how,
        "input": input_spec(cfg, info, height, width, INPUT_NAME),
        "output": {"name": OUTPUT_NAME, "shape": ["batch", info.num_classes, height, width],
                   "dtype": "float32", "meaning": "class scores; argmax over axis 1 is the class"},
        "class_names": list(info.class_names), "palette": [list(c) for c in info.palette],
        "ignore_index": info.ignore_index,
        "check": {"tolerance": f"max|diff| <= {TOLERANCE:g} * max(1, max|PyTorch|)",
                  "inputs": "standard normal, seed 0", "results": checked},
    }
    spec_path = out_path.with_name(out_path.name + ".json")
    write_text_atomic(spec_path, json.dumps(record, indent=2) + "\n")
    print(summary(record, out_path, spec_path, ema))
    return record


def summary(record: dict, out_path: Path, spec_path: Path, ema: bool) -> str:
    size = out_path.stat().st_size / 2 ** 20
    spec, outp = record["input"], record["output"]
    weights = ("EMA weights, which validation and the best checkpoint scored" if ema
               else "model weights")
    diffs = ", ".join(f"batch {r['batch']} {r['max_abs_diff']:.2e} <= {r['bound']:.2e}"
                      for r in record["check"]["results"])
    opset = f", opset {record['opset']}" if "opset" in record else ""
    lines = [
        f"exported {record['checkpoint']} (epoch {record['epoch']}, {weights}) with "
        f"{record['exporter']}{opset}",
        f"wrote   {out_path} ({size:.1f} MiB) and {spec_path.name}",
        f"input   {spec['name']} float32 [batch, {', '.join(map(str, spec['shape'][1:]))}] "
        f"(batch: any size)",
    ]
    lines += [f"          channel {i}: {c}" for i, c in enumerate(spec["channels"])]
    lines += [
        f"output  {outp['name']} float32 [batch, {', '.join(map(str, outp['shape'][1:]))}] "
        f"(class scores; argmax over axis 1: {', '.join(record['class_names'])})",
        f"check   {record['runtime']} vs PyTorch (eval), max|diff| <= {TOLERANCE:g} * "
        f"max(1, max|PyTorch|): {diffs}  OK",
        f"input from events: event_seg.data.model_input.model_input(spec, rgb, events), spec = "
        f"json.load(open('{spec_path.name}'))['input'] (docs/python_api.md: Building the input from events)",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(usage())
        return 0
    from omegaconf.errors import OmegaConfBaseException

    try:
        args = parse_arguments(argv)
        export(args["checkpoint"], args["format"], args.get("out"), args.get("height"),
               args.get("width"), args.get("opset"))
    except (OmegaConfBaseException, EventSegError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
