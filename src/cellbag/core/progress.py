"""One progress display for every long command.

On a terminal: a rich bar with count, rate and ETA. When the output is not a terminal
(``nohup``, SLURM, a pipe, a notebook), rich would show nothing until the end, so a plain
line (count, rate, ETA) is printed at a steady interval instead, so a log shows progress as
it happens. Both objects answer the same calls (``add_task``, ``update``, ``advance``,
``remove_task``, used as a context manager), so a stage writes its loop once.

``CELLBAG_PROGRESS=rich|plain|off`` forces a mode; ``CELLBAG_PROGRESS_INTERVAL`` sets the
plain line's interval in seconds (default 10).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

DEFAULT_INTERVAL = 10.0


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_rate(done: float, seconds: float, unit: str) -> str:
    """``12.3 cells/s``, or ``4.1 s/fold`` when slower than one a second."""
    if done <= 0 or seconds <= 0:
        return f"-- {unit}/s"
    rate = done / seconds
    if rate >= 1:
        return f"{rate:,.1f} {unit}/s"
    return f"{seconds / done:,.1f} s/{unit.rstrip('s') or unit}"


@dataclass
class _Task:
    """What a plain line needs of a task (also what a ``{task.fields[x]}`` template reads)."""

    id: int
    description: str
    total: float | None
    completed: float
    fields: dict[str, Any]
    start: float = field(default_factory=time.monotonic)
    start_completed: float = 0.0
    printed_at: float = 0.0
    finished: bool = False
    visible: bool = True

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def eta(self) -> float | None:
        done = self.completed - self.start_completed
        if self.total is None or done <= 0:
            return None
        return (self.total - self.completed) * self.elapsed / done


def _line(task: _Task, unit: str, extra: str | None) -> str:
    done = task.completed - task.start_completed
    total = f"/{task.total:,.0f}" if task.total else ""
    pct = f" ({100 * task.completed / task.total:.0f}%)" if task.total else ""
    text = (
        f"{task.description}: {task.completed:,.0f}{total} {unit}{pct}, "
        f"{format_rate(done, task.elapsed, unit)}, elapsed {_clock(task.elapsed)}"
    )
    if not task.finished and task.total:
        text += f", ETA {_clock(task.eta())}"
    if extra:
        try:
            text += ", " + extra.format(task=task)
        except (KeyError, ValueError, TypeError, IndexError):
            pass
    return text


class LineProgress:
    """Plain progress lines at a steady interval, for logs (same calls as rich's Progress)."""

    def __init__(
        self,
        unit: str = "items",
        extra: str | None = None,
        file: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.unit = unit
        self.extra = extra
        self.file = file
        self.interval = _interval() if interval is None else interval
        self.tasks: dict[int, _Task] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # rich's Progress API -------------------------------------------------------------
    def __enter__(self) -> LineProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cellbag-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        with self._lock:
            for t in self.tasks.values():
                if not t.finished and t.visible and t.completed > t.start_completed:
                    self._emit(t)

    def add_task(
        self,
        description: str,
        start: bool = True,
        total: float | None = 100.0,
        completed: float = 0,
        visible: bool = True,
        **fields: Any,
    ) -> int:
        with self._lock:
            tid = len(self.tasks)
            t = _Task(tid, description, total, completed, fields, visible=visible)
            t.start_completed = completed
            self.tasks[tid] = t
            if visible:
                self._emit(t)
        return tid

    def update(
        self,
        task_id: int,
        *,
        total: float | None = None,
        completed: float | None = None,
        advance: float | None = None,
        description: str | None = None,
        visible: bool | None = None,
        refresh: bool = False,
        **fields: Any,
    ) -> None:
        with self._lock:
            t = self.tasks[task_id]
            if total is not None:
                t.total = total
            if completed is not None:
                t.completed = completed
            if advance is not None:
                t.completed += advance
            if description is not None:
                t.description = description
            if visible is not None:
                t.visible = visible
            t.fields.update(fields)
            if t.total is not None and t.completed >= t.total and not t.finished:
                t.finished = True
                if t.visible:
                    self._emit(t)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def remove_task(self, task_id: int) -> None:
        with self._lock:
            self.tasks.pop(task_id, None)

    def refresh(self) -> None:
        """Nothing to redraw (lines are printed on their interval)."""

    # ---------------------------------------------------------------------------------
    def _emit(self, t: _Task) -> None:
        out = self.file or sys.stderr
        print(_line(t, self.unit, self.extra), file=out, flush=True)
        t.printed_at = time.monotonic()

    def _run(self) -> None:
        tick = min(1.0, self.interval)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                for t in list(self.tasks.values()):
                    if t.visible and not t.finished and now - t.printed_at >= self.interval:
                        self._emit(t)


def _interval() -> float:
    try:
        return max(0.01, float(os.environ.get("CELLBAG_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def mode(console: Any = None) -> str:
    """``rich`` on a terminal, ``plain`` otherwise (logs, pipes, notebooks), or the forced
    ``CELLBAG_PROGRESS`` mode."""
    forced = os.environ.get("CELLBAG_PROGRESS", "").strip().lower()
    if forced in ("rich", "plain", "off"):
        return forced
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    return "rich" if console.is_terminal and not console.is_jupyter else "plain"


def progress_bar(
    unit: str = "items",
    *,
    enabled: bool = True,
    extra: str | None = None,
    console: Any = None,
    transient: bool = True,
) -> Any:
    """A progress display counting ``unit`` (``cells``, ``folds``, ``steps`` ...).

    ``extra``: a rich-style template shown after the ETA, e.g. ``"loss {task.fields[loss]}"``.
    Returns a rich ``Progress`` on a terminal, else a :class:`LineProgress` (or a disabled
    ``Progress`` when ``enabled`` is false or ``CELLBAG_PROGRESS=off``).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    console = console or Console(stderr=True)
    how = mode(console) if enabled else "off"
    if how == "plain":
        file = sys.stdout if console.is_jupyter else console.file
        return LineProgress(unit=unit, extra=extra, file=file)

    class Rate(ProgressColumn):
        """The run's mean rate (steadier than rich's window)."""

        def render(self, task: Any) -> Text:
            c0 = starts.get(task.id, 0)
            return Text(
                format_rate(task.completed - c0, task.elapsed or 0.0, unit),
                style="progress.data.speed",
            )

    starts: dict[Any, float] = {}
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    if extra:
        columns.append(TextColumn(extra))

    class _Progress(Progress):
        def add_task(self, description: str, *a: Any, completed: float = 0, **kw: Any) -> Any:
            tid = super().add_task(description, *a, completed=completed, **kw)
            starts[tid] = completed
            return tid

    return _Progress(*columns, console=console, transient=transient, disable=how == "off")
