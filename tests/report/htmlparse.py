"""A small HTML reader for the report tests (standard library only)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


@dataclass
class Cell:
    attrs: dict[str, str]
    text: str
    table: dict[str, str]
    row: dict[str, str]


@dataclass
class Page:
    cells: list[Cell] = field(default_factory=list)  # every <td> with its table and row attrs
    galleries: list[tuple[dict[str, str], dict[str, str], dict[str, str]]] = field(
        default_factory=list
    )  # (gallery div attrs, row attrs, table attrs)
    imgs: list[dict[str, str]] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    scripts: list[dict[str, str]] = field(default_factory=list)
    elements: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    data: dict = field(default_factory=dict)


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.table: list[dict[str, str]] = []
        self.row: dict[str, str] = {}
        self.td: dict[str, str] | None = None
        self.text: list[str] = []
        self.in_json = False
        self.json_text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        self.page.elements.append((tag, a))
        if tag == "table":
            self.table.append(a)
        elif tag == "tr":
            self.row = a
        elif tag == "td":
            self.td, self.text = a, []
        elif tag == "img":
            self.page.imgs.append(a)
        elif tag in ("link", "a"):
            self.page.links.append(a)
        elif tag == "script":
            self.page.scripts.append(a)
            self.in_json = a.get("id") == "cellbag-data"
        elif tag == "div" and "gallery" in a.get("class", "").split():
            self.page.galleries.append(
                (a, dict(self.row), dict(self.table[-1]) if self.table else {})
            )

    def handle_endtag(self, tag):
        if tag == "td" and self.td is not None:
            t = self.table[-1] if self.table else {}
            self.page.cells.append(
                Cell(self.td, "".join(self.text).strip(), dict(t), dict(self.row))
            )
            self.td = None
        elif tag == "table" and self.table:
            self.table.pop()
        elif tag == "script" and self.in_json:
            self.page.data = json.loads("".join(self.json_text))
            self.in_json = False

    def handle_data(self, data):
        if self.td is not None:
            self.text.append(data)
        if self.in_json:
            self.json_text.append(data)


def read_page(path: Path) -> Page:
    r = _Reader()
    r.feed(Path(path).read_text(encoding="utf-8"))
    return r.page
