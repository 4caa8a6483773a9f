"""``report --out DIR`` never overwrites a user's files (issue 32): a non-empty folder that
is not a cellbag report is refused in one line naming its first entry, and stays
byte-identical; an earlier cellbag report is replaced."""

from __future__ import annotations

import pytest

from cellbag.report import ReportError, write_report


def test_report_refuses_a_folder_that_is_not_a_report(synthetic_run, tmp_path) -> None:
    run_dir, _ = synthetic_run
    out = tmp_path / "site"
    out.mkdir()
    page = b"<html><title>my own page</title></html>"
    (out / "index.html").write_bytes(page)
    with pytest.raises(ReportError, match=r"not a cellbag report \(it holds 'index.html'\)") as e:
        write_report(run_dir, out, top_k=1)
    assert "\n" not in str(e.value)
    assert (out / "index.html").read_bytes() == page and len(list(out.iterdir())) == 1
    ours = tmp_path / "report"
    index = write_report(run_dir, ours, top_k=1)
    assert write_report(run_dir, ours, top_k=1) == index  # its own report: replaced
