"""Cohort defects of issue 32 (section 2): each one line, nothing lost."""

from __future__ import annotations

import os
import sys
import warnings
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellbag.data import CohortError, raw_clinical, read_challenge
from cellbag.data.cohort import parse_dob
from cellbag.data.inspect import check_images, summarize


def _challenge(root: Path, rows: str) -> Path:
    (root / "trainset").mkdir(parents=True)
    (root / "trainset" / "trainset_true.csv").write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\n" + rows)
    for line in rows.splitlines():
        folder = root / "trainset" / line.split(",")[0]
        folder.mkdir()
        Image.new("RGB", (4, 4)).save(folder / "a.png")
    return root


def test_a_dob_after_the_reference_date_is_an_error_and_inspect_lists_it(tmp_path: Path) -> None:
    root = _challenge(tmp_path / "c", "P1,1,M,1/1/1950,3\nP2,0,F,1/1/2024,3\n")
    cohort = read_challenge(root)
    with pytest.raises(CohortError, match=r"patient P2: DOB 2024-01-01 is after the reference"):
        raw_clinical(cohort.patients)
    assert raw_clinical(cohort.patients, reference_date="2025-01-01")["age"].min() > 0
    found = summarize(cohort).findings
    assert any("P2" in f and "after the reference date" in f for f in found)


@pytest.mark.parametrize(
    "value",
    [
        "1942-02-26 00:00:00",
        "1942-02-26T00:00:00",
        pd.Timestamp("1942-02-26"),
        datetime(1942, 2, 26, 0, 0),
        date(1942, 2, 26),
        np.datetime64("1942-02-26"),
    ],
)
def test_iso_dates_and_datetime_values_are_read(value: object) -> None:
    assert parse_dob(value, file="t", patient_id="P1") == pd.Timestamp("1942-02-26")


@pytest.mark.parametrize("value", [pd.NaT, None, np.datetime64("NaT"), float("nan"), " "])
def test_missing_dates_are_unknown(value: object) -> None:
    assert pd.isna(parse_dob(value, file="t", patient_id="P1"))


def _dangling(tmp_path: Path) -> Path:
    root = _challenge(tmp_path / "c", "P1,1,M,1/1/1950,3\n")
    os.symlink(tmp_path / "gone.jpg", root / "trainset" / "P1" / "b.jpg")
    return root


def test_a_broken_link_is_listed_once_by_inspect(tmp_path: Path) -> None:
    root = _dangling(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = read_challenge(root)
    problems = summarize(cohort, check_images(cohort)).problems
    assert [p.kind for p in problems] == ["unreadable-image"]
    assert "broken symbolic link" in problems[0].message


def test_the_cli_prints_a_warning_as_one_line(monkeypatch, capsys) -> None:
    import cellbag.cli as cli

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after
    monkeypatch.setattr(sys, "argv", ["cellbag", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert warnings.showwarning is cli._warning_line
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("unreadable-image: x.jpg patient P1: broken\nlink", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "UserWarning" not in err and ".py:" not in err
    assert err.strip() == "warning: unreadable-image: x.jpg patient P1: broken link"
