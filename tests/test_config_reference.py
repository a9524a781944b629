"""docs/configuration.md lists every config key: its table is what scripts/config_reference.py
writes from the schemas, so a key added without regenerating the page fails here."""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def reference():
    spec = importlib.util.spec_from_file_location("config_reference",
                                                  REPO / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def schema_keys(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from schema_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_the_key_table_is_the_one_the_schemas_generate():
    ref = reference()
    page = ref.PAGE.read_text(encoding="utf-8")
    assert ref.BEGIN in page and ref.END in page, "docs/configuration.md has no key table"
    assert ref.rewritten(page) == page, f"docs/configuration.md is out of date: run {ref.COMMAND}"


def test_every_schema_key_has_a_row_with_its_default():
    from event_seg.config import TrainConfig

    table = reference().table()
    for key in schema_keys(TrainConfig):
        assert f"| `{key}` |" in table, key
    # A few that were missing, with the default the default run uses and their comment.
    assert "| `optimized_metric` | string | `best_val_mean_iou` |" in table
    assert "| `trainer.deterministic` | bool | `false` | reproducible GPU runs" in table
    assert "| `dataset.height` | int | `96` |" in table  # set by conf/dataset/synthetic.yaml
    assert "| `trainer.device` | string | `auto` | auto \\| cpu \\| cuda \\| cuda:N |" in table
