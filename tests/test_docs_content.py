"""The README and docs/ describe the project to its users: what the figures were measured on, and
no word about files outside the repository or how the work on it was organised."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Where the text would speak of the making of the project rather than of the project.
PROCESS = re.compile(r"\.\./shared|\bsessions?\b|\blent\b|\bthe issue\b|\bfinal code\b|"
                     r"\btoday\b|\bscratch script\b", re.I)


def prose(path: Path):
    """(line number, line) outside fenced code blocks (code may say `session` for onnxruntime)."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def test_docs_speak_of_the_project_not_of_its_making():
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in PAGES for n, line in prose(p)
             if PROCESS.search(line)]
    assert not found, "\n".join(found)


def test_the_gpu_path_is_said_unmeasured_with_the_command_that_measures_it():
    text = " ".join((REPO / "docs" / "performance.md").read_text(encoding="utf-8").split())
    assert "the GPU path has not been measured yet" in text
    assert "bash benchmarks/gpu.sh" in text


def test_the_make_train_figures_name_the_machine_they_come_from():
    sys.path.insert(0, str(REPO / "scripts"))
    import readme_figures

    run = {"metrics": {"epochs": 6, "epoch_times_s": [30.0, 40.0], "best_val_mean_iou": 0.5069,
                       "test_mean_iou": 0.4295},
           "series": {"val_mean_iou": [0.259], "train_loss": [1.6, 0.32]},
           "wall_s": 245.0, "machine": "AMD EPYC, 2 cores, no GPU", "date": "2026-11-30"}
    paragraph = " ".join(readme_figures.train_paragraph(run).split())
    assert "on AMD EPYC, 2 cores, no GPU, 2026-11-30: 4 min 05 s" in paragraph
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    block = readme.split("<!-- figures:make-train -->")[1].split("<!-- /figures:make-train -->")[0]
    assert "on AMD EPYC, 2 cores, no GPU, 2026-11-30" in block  # as the script writes it
    assert "These figures depend on the machine" in readme
    assert readme_figures.machine().count(",") >= 2  # CPU, cores, GPU of this machine
