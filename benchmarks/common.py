"""What every benchmark shares: best-of timing, a result record, and the machine description.

Each benchmark script answers one question with a table and one ratio measured side by side in
the same run (these machines are shared and noisy: absolute seconds mean little, ratios of
interleaved runs do). ``run_all.py`` (``make bench``) runs them all and writes RESULTS.md.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    question: str
    header: List[str]
    rows: List[list]
    ratio_name: str
    ratio: float
    target: str           # e.g. ">= 10" or "<= 1.03"
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def met(self) -> Optional[bool]:
        if not self.target:
            return None
        op, value = self.target.split()
        return self.ratio >= float(value) if op == ">=" else self.ratio <= float(value)

    def table(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |",
                 "|" + "|".join(" --- " for _ in self.header) + "|"]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def verdict(self) -> str:
        met = {True: "met", False: "NOT met", None: "no target"}[self.met]
        target = f" (target {self.target}: {met})" if self.target else ""
        return f"{self.ratio_name} = {self.ratio:.3f}{target}"

    def print(self) -> None:
        print(f"\n## {self.question}\n\n{self.table()}\n\n{self.verdict()}")
        if self.note:
            print(self.note)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """The fastest of ``repeats`` calls, in seconds (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {__import__('numpy').__version__}")
