"""Open a report in headless Chromium: check that it rendered and that every image loaded.

The page itself records, on ``load``, how many ``<img>`` it holds and which did not decode
(``naturalWidth == 0``) in ``#img-check``; Chromium's ``--dump-dom`` returns that DOM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cellbag.core.io import atomic_path
from cellbag.report.errors import ReportError

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``CELLBAG_CHROMIUM`` first), or None."""
    env = os.environ.get("CELLBAG_CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class BrowserCheck:
    images: int
    broken: list[str]
    metrics_rows: int
    dom: str
    page_size: tuple[int, int] = (0, 0)  # the page's scroll width and height, in CSS pixels


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    # a private profile and HOME: no state shared with another Chromium run
    with tempfile.TemporaryDirectory(prefix="cellbag-chromium-") as home:
        env = dict(os.environ, HOME=home)
        try:
            return subprocess.run(
                [*args, f"--user-data-dir={home}/profile"],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ReportError(f"chromium did not finish within {timeout:.0f} s") from None


def check_in_browser(
    index: str | Path,
    timeout: float = 60.0,
    width: int = 1400,
    height: int = 1000,
    open_all: bool = False,
) -> BrowserCheck:
    """Load ``index.html`` headless in a ``width`` x ``height`` window (``open_all``: with
    every collapsed block open); count its images, the broken ones and the metrics rows,
    and measure the page."""
    exe = find_chromium()
    if exe is None:
        raise ReportError(
            "chromium not found (install Debian's `chromium` or set CELLBAG_CHROMIUM)"
        )
    url = Path(index).resolve().as_uri() + ("#open-all" if open_all else "")
    size = f"--window-size={width},{height}"
    p = _run([exe, *FLAGS, "--virtual-time-budget=10000", size, "--dump-dom", url], timeout)
    dom = p.stdout
    m = re.search(r'<div id="img-check"[^>]*>', dom)
    if p.returncode != 0 or m is None:
        tail = (p.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise ReportError(f"chromium could not render {index} (exit {p.returncode}: {tail[0]})")
    tag = m.group(0)
    if 'data-done="1"' not in tag:
        raise ReportError(f"{index}: the page's load handler did not run in chromium")
    total = int(re.search(r'data-total="(\d+)"', tag).group(1))
    raw = re.search(r'data-broken="([^"]*)"', tag).group(1)
    broken = json.loads(raw.replace("&quot;", '"').replace("&amp;", "&"))
    table = re.search(r'<table id="metrics-table".*?</table>', dom, re.S)
    rows = len(re.findall(r"<tr>\s*<th scope=\"row\">", table.group(0))) if table else 0
    page = re.search(r'data-page="(\d+)x(\d+)"', tag)
    page_size = (int(page.group(1)), int(page.group(2))) if page else (0, 0)
    return BrowserCheck(total, broken, rows, dom, page_size)


def screenshot(
    index: str | Path, png: str | Path, width: int = 1400, height: int = 1600, timeout: float = 60.0
) -> Path:
    """Save a PNG screenshot of the report's first ``height`` pixels."""
    exe = find_chromium()
    if exe is None:
        raise ReportError(
            "chromium not found (install Debian's `chromium` or set CELLBAG_CHROMIUM)"
        )
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    url = Path(index).resolve().as_uri()
    with atomic_path(png) as tmp:
        p = _run(
            [
                exe,
                *FLAGS,
                "--virtual-time-budget=10000",
                f"--window-size={width},{height}",
                f"--screenshot={tmp}",
                url,
            ],
            timeout,
        )
        if p.returncode != 0 or not tmp.is_file():
            tail = (p.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise ReportError(
                f"chromium could not screenshot {index} (exit {p.returncode}: {tail[0]})"
            )
    return png
