"""The README's "Python API" section runs as written, block after block, on a small store."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## section`` of the README."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else None]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.fixture
def demo_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for `make demo`'s store: 28 patients (24 labelled), clinical columns."""
    from cellbag.store import from_arrays

    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 14)
    bags = [(rng.standard_normal((12, 16)) + 0.8 * v).astype(np.float32) for v in y]
    labels = [int(v) for v in y[:24]] + [None] * 4
    clinical = pd.DataFrame(
        {
            "gender": rng.choice(["M", "F"], len(y)),
            "dob": [f"{1940 + i}-05-0{1 + i % 9}" for i in range(len(y))],
            "lymph_count": np.round(5 + 10 * y + rng.gamma(2, 2, len(y)), 2),
        }
    )
    pids = [f"P{i}" for i in range(len(y))]
    monkeypatch.chdir(tmp_path)
    from_arrays("demo_out/store.zarr", bags, labels, pids, clinical=clinical, name="demo")
    return tmp_path


def test_python_api_section_runs(demo_store: Path, capsys: pytest.CaptureFixture) -> None:
    blocks = python_blocks("Python API")
    assert len(blocks) >= 5
    ns: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md Python API block {i + 1}", "exec"), ns)  # noqa: S102
    out = capsys.readouterr().out
    assert "Store(" in out and "mine-" in out
    assert ns["bag"].shape == (12, 16) and ns["bag"].dtype == np.float32
    table = ns["table"].set_index("head")
    assert {"meanpool", "lgbm"} <= set(table.index)  # (+ the clinical baseline, where there is one)
    assert (table.loc[["meanpool", "lgbm"], "roc_auc"] > 0.5).all()  # the bags carry signal
    assert ns["proba"].shape == (4,) and ((ns["proba"] >= 0) & (ns["proba"] <= 1)).all()
    assert ns["auc"].mean() > 0.5
    near = ns["near"]
    assert len(near) == 5 and (near["patient_id"] != ns["pid"]).all()
    assert (Path("runs/py") / "comparison.csv").is_file()
