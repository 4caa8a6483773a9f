"""The report in a real browser (headless Chromium): it renders, and every image loads."""

from __future__ import annotations

import shutil

import pytest
from htmlparse import read_page
from PIL import Image

from cellbag.report.browser import check_in_browser, find_chromium, screenshot

needs_chromium = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium not found: install Debian's `chromium` (`make browser`) to run the browser check",
)


@needs_chromium
def test_report_renders_with_every_image_loaded(store_report, tmp_path):
    n_img = len(read_page(store_report).imgs)
    check = check_in_browser(store_report)  # galleries and look-alike cells
    assert check.metrics_rows == 2  # abmil and meanpool rows rendered
    assert check.images == n_img > 10
    assert check.broken == []
    width, height = check.page_size
    assert width <= 1400 and 0 < height < 16_000  # collapsed blocks: a short page
    opened = check_in_browser(store_report, open_all=True)
    assert opened.page_size[0] <= 1400  # no sideways scrolling, galleries open
    assert opened.page_size[1] > height and opened.broken == []
    png = screenshot(store_report, tmp_path / "shot.png", width=1200, height=900)
    with Image.open(png) as im:
        assert im.size == (1200, 900)
        # not a blank page: the dark header and the pink cell thumbnails give colour variety
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 500


@needs_chromium
def test_browser_check_catches_a_broken_image(synthetic_report, tmp_path):
    copy = tmp_path / "report"
    shutil.copytree(synthetic_report.parent, copy)
    victim = sorted((copy / "thumbs").iterdir())[0]
    victim.write_bytes(b"not an image")
    check = check_in_browser(copy / "index.html")
    assert check.broken == [f"thumbs/{victim.name}"] * len(check.broken) and check.broken
