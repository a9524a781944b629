"""Sweep results at a glance: each job records how it ended, the sweep lists them all.

Every multirun job (grid, Optuna, joblib, submitit: whatever runs it) writes
``<job>/job_status.json`` when it starts (``running``) and when it ends (``finished``,
``skipped`` as already finished, ``failed`` with the first line of its error, ``interrupted``
by a pre-emption). When the sweep command ends, however it ends, ``main()`` reads them all and
writes ``summary.csv`` and ``summary.md`` beside the jobs, best first, failed jobs last, and
prints the table. A job that left ``running`` behind died without a word (killed, out of
memory): it is listed as failed.

The records live in the job folders, so a job run by another process (joblib, a SLURM node)
reports the same way, and a sweep re-run later lists the jobs of earlier runs too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

STATUS_FILE = "job_status.json"
# Set by train.main() for each run of a sweep (inherited by its jobs): which run a record is from.
SWEEP_RUN_ENV = "EVENT_SEG_SWEEP_RUN"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
# Ranked best first; then these, in this order.
ORDER = {"finished": 0, "skipped": 0, "interrupted": 1, "failed": 2}


class JobStatus:
    """The record of one multirun job, written where the job writes (its run folder)."""

    def __init__(self, job_dir: Path, overrides: List[str], metric: str, direction: str):
        self.path = Path(job_dir) / STATUS_FILE
        self.started = time.time()
        self.earlier = _read_json(self.path) or {}
        # A job resumed by a re-run sweep adds this run's time to the time it had spent before.
        self.earlier_wall_s = _number(self.earlier.get("wall_time_s")) or 0.0
        self.sweep_run = os.environ.get(SWEEP_RUN_ENV, "")
        self.record = {"status": "running", "overrides": list(overrides), "metric": metric,
                       "direction": direction, "host": socket.gethostname(), "pid": os.getpid(),
                       "sweep_run": self.sweep_run, "started_at": self.started,
                       "wall_time_s": self.earlier_wall_s}
        self._write()

    def ended(self, status: str, value: Optional[float] = None, error: str = "") -> None:
        spent = time.time() - self.started
        if (status == "skipped" and self.earlier.get("status") == "finished" and self.sweep_run
                and self.earlier.get("sweep_run") == self.sweep_run):
            # A twin of a job this very sweep trained (an Optuna trial with the same
            # parameters): the folder's job is still the one that finished here.
            status = "finished"
        self.record.update(status=status, value=value, error=first_line(error),
                           ended_at=time.time(),
                           # A skipped job spent nothing new: its time is the training's.
                           wall_time_s=self.earlier_wall_s + (0.0 if status == "skipped" else spent))
        self._write()

    def _write(self) -> None:
        from .engine.trial import write_text_atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(self.record, indent=2, allow_nan=True))


def first_line(error: str) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] if len(lines[0]) <= 300 else lines[0][:299] + "…"


@dataclass
class Row:
    job: str
    overrides: str
    status: str
    value: Optional[float]
    best_val_mean_iou: Optional[float]
    test_mean_iou: Optional[float]
    epochs: str
    wall_time_s: Optional[float]
    error: str = ""
    extra: dict = field(default_factory=dict)


def wait_for_running_jobs(sweep_dir: Path, timeout_s: float) -> None:
    """After Ctrl-C or SIGTERM: jobs in other processes on this host (joblib workers) get up to
    ``timeout_s`` to record how they ended before the summary is written."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        alive = [r for r in map(_read_json, Path(sweep_dir).glob(f"*/{STATUS_FILE}"))
                 if r and r.get("status") == "running" and r.get("host") == socket.gethostname()
                 and r.get("pid") != os.getpid() and pid_alive(r.get("pid"))]
        if not alive:
            return
        time.sleep(0.5)


def pid_alive(pid) -> bool:
    """Whether process ``pid`` (on this host) still exists."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def collect(sweep_dir: Path, stopped: bool = False) -> List[Row]:
    """One row per job folder of the sweep that has a status record, sorted best first. After
    the sweep was stopped (``stopped``), a job still marked running was interrupted with it."""
    rows, metric, direction = [], None, "maximize"
    for status_file in sorted(Path(sweep_dir).glob(f"*/{STATUS_FILE}")):
        job_dir = status_file.parent
        record = _read_json(status_file)
        if record is None:
            rows.append(Row(job_dir.name, "", "failed", None, None, None, "", None,
                            error=f"{status_file} is unreadable"))
            continue
        metric = record.get("metric") or metric
        direction = record.get("direction") or direction
        metrics = _read_json(job_dir / "metrics.json") or {}
        status, error = record.get("status", "failed"), record.get("error", "")
        if status == "running" and stopped:
            status, error = "interrupted", "the sweep was stopped while this job ran"
            # Its process was stopped with the sweep before it could record its time.
            started = _number(record.get("started_at"))
            record["wall_time_s"] = ((_number(record.get("wall_time_s")) or 0.0)
                                     + (max(0.0, _last_write(job_dir) - started)
                                        if started else 0.0))
        elif status == "running":
            status, error = "failed", ("ended without a result (killed, out of memory, or its "
                                       f"node went away); see {job_dir / 'train.log'}")
        epochs = metrics.get("epochs")
        early = metrics.get("stopped_early_at_epoch")
        rows.append(Row(
            job=job_dir.name, overrides=" ".join(map(str, record.get("overrides") or [])),
            status=status,
            value=_number(record.get("value")),
            best_val_mean_iou=_number(metrics.get("best_val_mean_iou")),
            test_mean_iou=_number(metrics.get("test_mean_iou")),
            epochs=(f"{early}/{epochs}" if early else str(epochs)) if epochs else "",
            wall_time_s=_number(record.get("wall_time_s")), error=error,
            extra={"metric": record.get("metric")}))
    sign = -1.0 if direction == "maximize" else 1.0

    def rank(row: Row):
        bad = row.value is None or ORDER.get(row.status, 2) > 0
        return (ORDER.get(row.status, 2), bad, sign * row.value if not bad else 0.0, row.job)

    return sorted(rows, key=rank)


def write_summary(sweep_dir: Path, stopped: bool = False) -> Optional[str]:
    """Writes summary.csv and summary.md in the sweep folder; returns the table to print (None
    when no job left a record: the sweep stopped before any job started)."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir, stopped)
    if not rows:
        return None
    metric = next((r.extra.get("metric") for r in rows if r.extra.get("metric")),
                  "best_val_mean_iou")
    own_column = metric not in ("best_val_mean_iou", "test_mean_iou")  # else one column, not two
    header = ["job", "overrides", "status", *([metric] if own_column else []),
              "best_val_mean_iou", "test_mean_iou", "epochs", "wall_time_s", "error"]

    def cells(r: Row, fmt) -> list:
        scores = [r.best_val_mean_iou, r.test_mean_iou]
        if own_column:
            scores.insert(0, r.value)
        return [r.job, r.overrides, r.status, *(fmt(v) for v in scores), r.epochs,
                fmt(r.wall_time_s, 1), r.error]

    # The CSV keeps full precision (it is data); the table and the console round.
    exact = [cells(r, lambda v, digits=None: "" if v is None else repr(v)) for r in rows]
    values = [cells(r, _fmt) for r in rows]
    from .engine.trial import write_text_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(exact)
    write_text_atomic(sweep_dir / SUMMARY_CSV, buffer.getvalue())
    counts = {s: sum(r.status == s for r in rows) for s in ("finished", "skipped", "failed",
                                                           "interrupted")}
    said = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    md = [f"# Sweep {sweep_dir.name}", "", f"{len(rows)} jobs: {said}. Ranked by {metric}, "
          "best first; failed jobs last.", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in values]
    write_text_atomic(sweep_dir / SUMMARY_MD, "\n".join(md) + "\n")
    return _console_table(header, values, f"Sweep {sweep_dir}: {len(rows)} jobs ({said})",
                          sweep_dir)


def failed_jobs(sweep_dir: Path, stopped: bool = False) -> int:
    return sum(r.status == "failed" for r in collect(Path(sweep_dir), stopped))


def short_overrides(overrides: str) -> str:
    """``optimizer.lr=0.00190303683817358 model.encoder_name=resnet18`` as
    ``lr=0.0019 encoder_name=resnet18``: what a person scans for in a table (the files keep
    the exact values). A key keeps its full path where its last part is not unique."""
    pairs = [o.split("=", 1) for o in overrides.split(" ") if "=" in o]
    last = [k.rsplit(".", 1)[-1] for k, _ in pairs]
    out = []
    for (key, value), tail in zip(pairs, last):
        try:
            number = float(value)
            if "." in value or "e" in value.lower():
                value = f"{number:.3g}"
        except ValueError:
            pass
        out.append(f"{tail if last.count(tail) == 1 else key}={value}")
    return " ".join(out)


def _console_table(header, values, title, sweep_dir) -> str:
    # The console names each job by its overrides, shortened; the files keep both in full.
    at = header.index("overrides")
    values = [[short_overrides(row[at]) or row[0], *row[1:at], *row[at + 1:]] for row in values]
    header = ["job", *header[1:at], *header[at + 1:]]
    keep = list(range(len(header)))
    cells = [header] + values
    widths = [min(80 if i == 0 else 60, max(len(str(c[i])) for c in cells))
              for i in range(len(keep))]
    lines = [title]
    for n, row in enumerate(cells):
        lines.append("  ".join(_cut(str(v), w).ljust(w) for v, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"written: {sweep_dir / SUMMARY_CSV} and {SUMMARY_MD}")
    return "\n".join(lines)


def _last_write(job_dir: Path) -> float:
    """When the job last wrote its log (or its record): about when it stopped."""
    times = [p.stat().st_mtime for p in (job_dir / "train.log", job_dir / STATUS_FILE)
             if p.exists()]
    return max(times, default=0.0)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
