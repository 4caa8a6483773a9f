"""Montage PNG and the self-contained HTML page (checked in headless Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import FAKE
from PIL import Image

from cellbag.retrieval import html_page, montage, neighbors

K = 5


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


# Reports, once the page has loaded, each <img> and its naturalWidth into the DOM.
PROBE = """<script>
window.addEventListener('load', function () {
  var out = [];
  document.querySelectorAll('img').forEach(function (im) {
    out.push((im.complete ? im.naturalWidth : 0) + 'x' + im.naturalHeight + ' ' + im.alt);
  });
  var pre = document.createElement('pre');
  pre.id = 'img-probe';
  pre.textContent = out.join('\\n');
  document.body.appendChild(pre);
});
</script>"""


def rendered_images(page: Path) -> list[tuple[int, str]]:
    """(naturalWidth, alt) of every <img> of ``page`` once loaded in headless Chromium."""
    exe = find_chromium()
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    with tempfile.TemporaryDirectory() as home:
        p = subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={home}/profile",
                "--virtual-time-budget=5000",
                "--dump-dom",
                probe.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env=dict(os.environ, HOME=home),
            check=False,
        )
    m = re.search(r'<pre id="img-probe">(.*?)</pre>', p.stdout, re.S)
    assert m, f"chromium did not render the page (exit {p.returncode}): {p.stderr[-500:]}"
    out = []
    for line in m.group(1).strip().splitlines():
        size, _, alt = line.partition(" ")
        out.append((int(size.split("x")[0]), alt))
    return out


@pytest.fixture
def hits(fake_store):
    return neighbors(fake_store, FAKE, cell_id=fake_store.cells()["cell_id"].iloc[0], k=K)


def test_montage_has_the_query_and_k_tiles(hits, tmp_path):
    out = montage(hits, tmp_path / "m.png", thumb=96, columns=3)
    with Image.open(out) as im:
        assert im.format == "PNG"
        # 1 + K = 6 tiles in 3 columns -> 2 rows
        assert im.size == (3 * (96 + 8) + 8, 2 * (96 + 34 + 8) + 8)
        # tiles hold the cell pictures, not placeholders: lots of colours
        assert len(im.convert("RGB").getcolors(1 << 20) or []) > 1000


def test_html_is_self_contained_and_lists_k_neighbours(hits, tmp_path):
    page = html_page(hits, tmp_path / "p.html")
    text = page.read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(srcs) == K + 1 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for cell_id in hits["cell_id"]:
        assert cell_id in text
    assert "image not found" not in text
    assert len(re.findall(r"<tr><td class=\"?num\"?>", text)) == K


def test_missing_image_gets_a_placeholder_and_a_note(hits, tmp_path):
    hits = hits.copy()
    hits.loc[1, "path"] = str(tmp_path / "gone.jpg")
    text = html_page(hits, tmp_path / "p.html").read_text()
    assert text.count("image not found") == 1
    montage(hits, tmp_path / "m.png")  # still drawn


@pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium not installed (apt-get install chromium): HTML rendering not checked",
)
def test_html_page_renders_every_image_in_chromium(hits, tmp_path):
    page = html_page(hits, tmp_path / "p.html")
    images = rendered_images(page)
    assert len(images) == K + 1
    assert [alt for _, alt in images[1:]] == hits["cell_id"].tolist()
    assert all(width > 0 for width, _ in images), images
    # the probe does catch a broken image
    broken = page.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    (tmp_path / "broken.html").write_text(broken)
    widths = [w for w, _ in rendered_images(tmp_path / "broken.html")]
    assert widths[0] == 0 and all(w > 0 for w in widths[1:])
