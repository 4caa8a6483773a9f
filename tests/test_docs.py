"""The README and docs/ hold no dead link and no command line the CLI would refuse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", flags=re.S)
INLINE = re.compile(r"`(cellbag [^`]+)`")


def _ids(pages: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in pages]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text())
    return [a or b for a, b in LINK.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page: Path) -> None:
    bad = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not bad, f"{page.name}: " + "; ".join(bad)


def command_lines(page: Path) -> list[tuple[str, bool]]:
    """Every `cellbag ...` invocation the page shows, and whether it is a whole command line:
    in code blocks (continuations joined, comments dropped, `python -m cellbag` and
    torchrun's `-m cellbag` included), or inline in the text (a verb and some options)."""
    text = page.read_text()
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            m = re.search(r"(?:^|\s)(?:-m |--no-python )?(cellbag\s.*)$", line)
            if m and not line.startswith(("from ", "import ", "pip ")):
                found.append((m.group(1), True))
    found += [(c, False) for c in INLINE.findall(FENCE.sub("", text))]
    return found


def _words(line: str) -> list[str]:
    """The arguments after ``cellbag``; optional brackets dropped, ``a|b`` alternatives as a."""
    words = []
    for w in shlex.split(line.replace("[", " ").replace("]", " "))[1:]:
        if w in ("...", "…"):
            continue
        words.append(w.split("|")[0] if w.startswith("-") else w)
    return words


def check_command(root: typer.core.TyperGroup, words: list[str], whole: bool = True) -> str | None:
    """None when the verb exists and accepts every option named (and, for a ``whole`` line,
    click parses it), else why not."""
    cmd, path = root, ["cellbag"]
    rest = list(words)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        sub = cmd.commands.get(rest[0])
        if sub is None:
            return f"{' '.join(path)}: no command {rest[0]!r}"
        cmd, path = sub, [*path, rest.pop(0)]
    names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for w in rest:
        if w.startswith("-") and len(w) > 1 and not re.match(r"^-\d", w):
            name = w.split("=", 1)[0]
            if name not in names:
                return f"{' '.join(path)}: no option {name}"
    if not whole:
        return None
    try:  # and click parses it: eager --help stops before required arguments are checked
        cmd.main([*rest, "--help"], prog_name=" ".join(path), standalone_mode=False)
    except Exception as e:  # noqa: BLE001 - typer's own click: its UsageError
        return f"{' '.join(path)}: {getattr(e, 'format_message', e.__str__)()}"
    return None


def test_pages_show_commands() -> None:
    lines = [c for p in PAGES for c, _ in command_lines(p)]
    assert len(lines) > 30
    assert any(c.startswith("cellbag cv ") for c in lines)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_command_lines_parse(page: Path, capsys: pytest.CaptureFixture) -> None:
    from cellbag.cli import app

    root = typer.main.get_command(app)
    bad = []
    for line, whole in command_lines(page):
        why = check_command(root, _words(line), whole)
        if why:
            bad.append(f"{line!r}: {why}")
    capsys.readouterr()  # the help pages printed on the way
    assert not bad, "\n".join(bad)


def test_checker_refuses_unknown_verbs_and_options() -> None:
    from cellbag.cli import app

    root = typer.main.get_command(app)
    assert check_command(root, _words("cellbag cv STORE --out RUN --head abmil")) is None
    assert "no option --tirage" in check_command(root, _words("cellbag cv S --tirage 0.9"))
    assert "no command" in check_command(root, _words("cellbag crossval S"))
    assert "no command" in check_command(root, _words("cellbag store infos S"))
