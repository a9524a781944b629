"""README.md and docs/*.md: every relative link and image resolves, every ``#anchor`` names a
heading of its page (GitHub's slugs), every docs page is linked from the README, and the README
stays a front door (at most 230 lines). Standard library only; runs in well under a second."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 230

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", re.S)  # within one paragraph
# [text](target) and ![alt](target); the target may be <wrapped> and followed by a "title".
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"  # [text], one level of [nesting]
                  r"\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S+)", re.M)
ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines of a markdown file with the fenced code blocks blanked (line numbers kept)."""
    lines, fence = [], None
    for line in text.split("\n"):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            lines.append("")
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not line.strip()[len(match.group(1)):].strip():
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text without markup, lowercased, every character other
    than letters, digits, spaces, hyphens and underscores removed, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, duplicates numbered -1, -2, ... as GitHub does."""
    lines = prose_lines(path.read_text(encoding="utf-8"))
    headings = []
    for i, line in enumerate(lines):
        match = ATX.match(line)
        if match:
            headings.append(match.group(2))
        elif i and lines[i - 1].strip() and SETEXT.match(line) and not ATX.match(lines[i - 1]):
            headings.append(lines[i - 1])
    seen: dict[str, int] = {}
    found = set()
    for heading in headings:
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link, image and link reference outside code."""
    prose = "\n".join(prose_lines(path.read_text(encoding="utf-8")))
    # Code spans become a placeholder of the same line count, so [`x`](y) still counts.
    prose = CODE_SPAN.sub(lambda m: "code" + "\n" * m.group(0).count("\n"), prose)
    found = []
    for pattern in (LINK, REFERENCE):
        for match in pattern.finditer(prose):
            target = match.group(match.lastindex).strip("<>")
            found.append((prose.count("\n", 0, match.start()) + 1, target))
    return found


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """One line per link of `path` that does not resolve: a missing file or folder, a path
    outside the repository, or an anchor no heading of the target page has."""
    problems = []
    for line, target in links(path):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # http(s)://, mailto: and other absolute URLs
        where = f"{path.relative_to(root)}:{line}: ({target})"
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part.split("?", 1)[0])
        if file_part:
            base = root if file_part.startswith("/") else path.parent
            resolved = (base / file_part.lstrip("/")).resolve()
            if resolved != root.resolve() and root.resolve() not in resolved.parents:
                problems.append(f"{where} points outside the repository")
                continue
            if not resolved.exists():
                missing = resolved.relative_to(root.resolve())
                problems.append(f"{where}: no such file or folder {missing}")
                continue
        else:
            resolved = path
        if anchor and resolved.suffix.lower() == ".md":
            if unquote(anchor) not in anchors(resolved):
                problems.append(f"{where}: {resolved.name} has no heading with the anchor "
                                f"#{anchor}")
    return problems


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def test_slug_follows_github():
    assert slug("Experiment tracking: TensorBoard and Weights & Biases") == \
        "experiment-tracking-tensorboard-and-weights--biases"
    assert slug("Export (ONNX, TorchScript)") == "export-onnx-torchscript"
    assert slug("`trainer.ema` and the_EMA ") == "trainerema-and-the_ema"
    assert slug("See [the docs](docs/x.md)") == "see-the-docs"


def test_checker_reports_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## Part\n\n## Part\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#part-1) [ok](#page) ![ok](other.md) [web](https://example.com/x.md)\n"
        "[missing file](nope.md) [missing anchor](other.md#nothing) [bad self](#nope)\n"
        "[outside](../../etc/passwd) ![missing picture](gone.png)\n\n"
        "```\n[in a fence](ignored.md)\n```\n\n`[in code](ignored.md)`\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 5, problems
    for wrong in ("nope.md", "#nothing", "#nope", "etc/passwd", "gone.png"):
        assert any(wrong in p for p in problems), (wrong, problems)


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def test_every_docs_page_is_linked_from_readme():
    linked = set()
    for _, target in links(README):
        file_part = unquote(target.partition("#")[0])
        if file_part and not SCHEME.match(file_part):
            linked.add((README.parent / file_part).resolve())
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_readme_keeps_the_blocks_readme_figures_rewrites():
    """scripts/readme_figures.py rewrites these marked blocks in README.md in place."""
    script = (REPO / "scripts" / "readme_figures.py").read_text(encoding="utf-8")
    names = re.findall(r"replace_block\(text, \"([\w-]+)\"", script)
    assert names, "scripts/readme_figures.py names no figure blocks"
    readme = README.read_text(encoding="utf-8")
    for name in names:
        assert f"<!-- figures:{name} -->" in readme and f"<!-- /figures:{name} -->" in readme, name
