"""Writes the key table of docs/configuration.md from the config schemas.

    .venv/bin/python scripts/config_reference.py          # rewrite the table in place
    .venv/bin/python scripts/config_reference.py --check  # exit 1 if the page is out of date

Every key of the dataclasses in event_seg/config.py gets a row: its name, its type, its value
in the default run (what ``python -m event_seg.train --cfg job`` composes: the schema's default
or what the default groups in conf/ set) and a description: the comment beside or above the
field in config.py, else the one beside the key in conf/train.yaml, plus the allowed values
where ``config.CHOICES`` lists them. The rows replace what lies between the
``<!-- keys:begin -->`` and ``<!-- keys:end -->`` markers; the rest of the page is left as it is.
tests/test_config_reference.py fails when the page differs from what this writes, so a new key
without its row fails the suite.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import re
import sys
import tokenize
import typing
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"
BEGIN, END = "<!-- keys:begin -->", "<!-- keys:end -->"
COMMAND = ".venv/bin/python scripts/config_reference.py"
LONGEST_VALUE = 40  # a longer default is summarised (its length), not printed


def field_comments(source: str) -> Dict[Tuple[str, str], str]:
    """``(class name, field name) -> comment``: the comment lines right above a field and the
    one at the end of its line, in the order they are read."""
    comments: Dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    found: Dict[Tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above, row = [], item.lineno - 1
            while row >= 1 and lines[row - 1].strip().startswith("#"):
                above.insert(0, comments[row])
                row -= 1
            beside = [comments[item.lineno]] if item.lineno in comments else []
            text = " ".join(above + beside).strip()
            if text:
                found[(node.name, item.target.id)] = text
    return found


def yaml_comments(text: str, prefix: str = "") -> Dict[str, str]:
    """``dotted key -> comment`` of a plain nested YAML file of conf/: the comment lines right
    above a key and the one beside it (with the lines that continue it in its column). The
    comment above a file's first key describes the file, not that key."""
    found: Dict[str, str] = {}
    stack: List[Tuple[int, str]] = []
    above: List[str] = []
    first, beside_at, last = True, -1, ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# @package"):
            prefix = stripped.split()[-1] + "."
            continue
        if stripped.startswith("#"):
            if line.index("#") == beside_at:  # the comment beside the last key goes on
                found[last] += " " + stripped.lstrip("#").strip()
            else:
                above.append(stripped.lstrip("#").strip())
                beside_at = -1
            continue
        match = re.match(r"^( *)([A-Za-z_][\w+-]*):(.*)$", line)
        if not match:
            above, beside_at = [], -1
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        beside = rest.split(" #", 1)[1].strip() if " #" in rest else ""
        beside_at = line.index(" #", len(match.group(1)) + len(key)) + 1 if beside else -1
        last = prefix + ".".join(k for _, k in stack)
        text_ = " ".join(([] if first else above) + ([beside] if beside else [])).strip()
        if text_:
            found[last] = text_
        above, first = [], False
    return found


def conf_comments() -> Dict[str, str]:
    """The comments of conf/train.yaml and of the group options its defaults list chooses, by
    the key they describe."""
    import yaml

    train = (REPO / "conf" / "train.yaml").read_text(encoding="utf-8")
    found = yaml_comments(train)
    for entry in yaml.safe_load(train)["defaults"]:
        if not isinstance(entry, dict):
            continue
        (group, option), = entry.items()
        path = REPO / "conf" / group / f"{option}.yaml"
        if option is None or group in ("logger", "hydra") or not path.is_file():
            continue
        for key, text in yaml_comments(path.read_text(encoding="utf-8"), f"{group}.").items():
            found.setdefault(key, text)
    return found


def type_name(annotation: str) -> str:
    """``Optional[List[float]]`` -> ``list of float, or null``: read by users, not by Python."""
    text = annotation.replace(" ", "")
    optional = text.startswith("Optional[") and text.endswith("]")
    if optional:
        text = text[len("Optional["):-1]
    text = re.sub(r"Dict\[([^,\]]+),(.+)\]", r"dict", text)
    while re.search(r"List\[([^\[\]]+)\]", text):
        text = re.sub(r"List\[([^\[\]]+)\]", r"list of \1", text)
    text = re.sub(r"\bstr\b", "string", re.sub(r"\bAny\b", "any", text))
    return f"{text}, or null" if optional else text


def shown(value) -> str:
    """A default as it is typed on the command line."""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, separators=(",", ":")).replace('"', "")
        if len(text) > LONGEST_VALUE:
            one, many = ("entry", "entries") if isinstance(value, dict) else ("item", "items")
            return f"{len(value)} {one if len(value) == 1 else many}"
        return f"`{text}`"
    if value == "???":
        return "(required)"
    return f"`{value}`"


def default_config() -> dict:
    """The default run's config, composed as the train command composes it, unresolved."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    sys.path.insert(0, str(REPO))
    import event_seg.config  # noqa: F401  (registers the schemas)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="train")
    return OmegaConf.to_container(cfg, resolve=False)


def rows() -> List[str]:
    sys.path.insert(0, str(REPO))
    from event_seg import config

    source = (REPO / "event_seg" / "config.py").read_text(encoding="utf-8")
    comments = field_comments(source)
    from_yaml = conf_comments()
    defaults = default_config()
    out: List[str] = []

    def walk(cls, prefix: str, values: dict) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            value = values.get(f.name) if isinstance(values, dict) else None
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], key + ".", value or {})
                continue
            text = comments.get((cls.__name__, f.name)) or from_yaml.get(key, "")
            choices = config.CHOICES.get(key, ())
            if choices and not all(re.search(rf"(^|[\s(|]){re.escape(c)}\b", text)
                                   for c in choices):
                allowed = ", ".join(f"`{c}`" for c in choices)
                text = f"{text} (one of: {allowed})" if text else f"one of: {allowed}"
            text = text.replace("|", "\\|").replace("<", "&lt;")
            out.append(f"| `{key}` | {type_name(str(f.type))} | {shown(value)} | {text} |")

    walk(config.TrainConfig, "", defaults)
    return out


def table() -> str:
    head = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    return "\n".join([BEGIN, *head, *rows(), END])


def rewritten(page: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(page):
        raise SystemExit(f"{PAGE} has no {BEGIN} ... {END} block")
    return pattern.sub(lambda _: table(), page)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/configuration.md differs from the schemas")
    args = parser.parse_args()
    page = PAGE.read_text(encoding="utf-8")
    new = rewritten(page)
    if args.check:
        if new != page:
            print(f"{PAGE.relative_to(REPO)} is out of date with the config schemas; run "
                  f"{COMMAND}", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new, encoding="utf-8")
    print(f"{PAGE.relative_to(REPO)}: {len(rows())} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
