"""The one progress display: rich bars on a terminal, plain lines at an interval in logs."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console
from rich.progress import Progress

from cellbag.core.progress import LineProgress, format_rate, progress_bar


def test_plain_lines_show_count_rate_and_eta_while_it_runs():
    out = io.StringIO()
    with LineProgress(
        unit="cells", file=out, interval=0.05, extra="loss {task.fields[loss]:.2f}"
    ) as bar:
        task = bar.add_task("embed", total=10, loss=1.5)
        for _ in range(4):
            time.sleep(0.03)
            bar.advance(task)
        time.sleep(0.2)  # nothing advances: the log still gets a line at each interval
        mid = out.getvalue().splitlines()
        for _ in range(6):
            bar.update(task, advance=1, loss=0.25)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("embed: 0/10 cells (0%)")
    # lines while it ran, before the end: count, rate and ETA
    running = [x for x in mid if x.startswith("embed: 4/10 cells (40%)")]
    assert len(running) >= 2, mid
    assert re.search(r"cells/s, elapsed 0:00:0\d, ETA 0:00:0\d, loss 1.50$", running[-1])
    assert lines[-1].startswith("embed: 10/10 cells (100%)") and "ETA" not in lines[-1]
    assert lines[-1].endswith("loss 0.25")
    assert sum(x.startswith("embed: 10/10") for x in lines) == 1  # the end is printed once


def test_a_resumed_task_counts_its_rate_from_where_it_started():
    out = io.StringIO()
    bar = LineProgress(unit="steps", file=out, interval=60)
    task = bar.add_task("MAE", total=100, completed=90)
    time.sleep(0.05)
    bar.update(task, completed=100)
    last = out.getvalue().splitlines()[-1]
    rate = float(re.search(r"([\d.,]+) steps/s", last).group(1).replace(",", ""))
    assert rate < 10 / 0.05 * 1.5  # 10 steps in ~0.05 s, not 100


def test_mode_follows_the_output_and_the_environment(monkeypatch):
    monkeypatch.delenv("CELLBAG_PROGRESS", raising=False)
    log = Console(file=io.StringIO(), force_terminal=False, force_jupyter=False)
    tty = Console(file=io.StringIO(), force_terminal=True, force_jupyter=False)
    assert isinstance(progress_bar("cells", console=log), LineProgress)
    assert isinstance(progress_bar("cells", console=tty), Progress)
    off = progress_bar("cells", console=log, enabled=False)
    assert isinstance(off, Progress) and off.disable
    monkeypatch.setenv("CELLBAG_PROGRESS", "plain")
    assert isinstance(progress_bar("cells", console=tty), LineProgress)
    monkeypatch.setenv("CELLBAG_PROGRESS", "off")
    assert progress_bar("cells", console=tty).disable


def test_rich_bar_shows_rate_and_eta_on_a_terminal(monkeypatch):
    monkeypatch.delenv("CELLBAG_PROGRESS", raising=False)
    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=120, force_jupyter=False)
    with progress_bar("folds", console=con, transient=False) as bar:
        t = bar.add_task("cv abmil", total=4)
        time.sleep(0.05)
        bar.update(t, advance=2)
    text = buf.getvalue()
    assert "cv abmil" in text and "2/4" in text and "folds/s" in text and "ETA" in text


def test_rate_reads_well_fast_and_slow():
    assert format_rate(30, 2.0, "cells") == "15.0 cells/s"
    assert format_rate(2, 8.0, "folds") == "4.0 s/fold"
    assert format_rate(0, 1.0, "steps") == "-- steps/s"
