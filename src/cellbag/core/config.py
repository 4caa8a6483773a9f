"""Settings files: a dataclass of a run's settings written as YAML and read back.

Shared by the stages that write one (``cellbag cv`` and ``fit``: ``config.yaml`` in the run
or model folder; ``cellbag featurize``: ``featurize.yaml`` beside the encoder's embeddings).
The file names its kind (``cellbag: CVConfig``); unknown keys are an error naming them and
the file (a typo is not a silent default). A path may be an fsspec URL (``s3://...``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path
from typing import Any

from cellbag.core.io import atomic_path
from cellbag.errors import CellbagError


def _is_url(path: str) -> bool:
    return "://" in path


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, header: str = "") -> str:
    """``cfg`` as YAML: its kind (``cellbag: <class name>``), then every setting in order;
    ``header`` lines come first as comments."""
    import yaml

    doc = {"cellbag": type(cfg).__name__, **to_dict(cfg)}
    lines = "".join(f"# {line}\n" for line in header.splitlines())
    return lines + yaml.safe_dump(doc, sort_keys=False)


def write_yaml(cfg: Any, path: str | Path, header: str = "") -> str:
    """Write ``cfg`` to ``path`` (atomically when local; through fsspec for a URL)."""
    text = dump_yaml(cfg, header)
    path = str(path)
    if _is_url(path) and not path.startswith("file://"):
        import fsspec.core

        fs, fs_path = fsspec.core.url_to_fs(path)
        fs.pipe_file(fs_path, text.encode())
        return path
    local = Path(path.removeprefix("file://"))
    with atomic_path(local) as tmp:
        tmp.write_text(text)
    return path


def _read_text(path: str) -> str:
    if _is_url(path) and not path.startswith("file://"):
        import fsspec

        with fsspec.open(path, "rt") as fh:
            return fh.read()
    return Path(path.removeprefix("file://")).read_text()


def read_yaml(path: str | Path, kind: type, error: type[Exception] = CellbagError) -> Any:
    """The ``kind`` dataclass held in the YAML file at ``path``; a missing or unreadable
    file, another kind, an unknown key or a bad value is one line (``error``) naming it."""
    import yaml

    path = str(path)
    try:
        doc = yaml.safe_load(_read_text(path))
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a mapping of settings")
    what = doc.pop("cellbag", kind.__name__)
    if what != kind.__name__:
        raise error(f"{path}: holds a {what}, not a {kind.__name__}")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(doc) - known, key=str)
    if unknown:
        raise error(
            f"{path}: unknown setting(s) {', '.join(map(str, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        return kind(**doc)
    except (TypeError, ValueError) as e:
        raise error(f"{path}: {e}") from None


def override(cfg: Any, **given: Any) -> Any:
    """``cfg`` with the settings in ``given`` that are not None (flags beside --config)."""
    return dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
