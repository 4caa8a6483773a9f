"""``blas_single_thread``: numpy's BLAS on one thread inside, as it was after, with the
controller (a scan of the process's libraries) made again only after a new import."""

from __future__ import annotations

import sys

from threadpoolctl import threadpool_info

from cellbag.aggregate import base


def blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_one_blas_thread_inside_and_the_setting_restored_after(monkeypatch):
    before = blas_threads()
    with base.blas_single_thread():
        assert blas_threads() and set(blas_threads()) == {1}
    assert blas_threads() == before
    ctl = base._BLAS[0]
    with base.blas_single_thread():
        pass
    assert base._BLAS[0] is ctl  # nothing imported since: the same controller
    monkeypatch.setitem(sys.modules, "a_module_imported_since", sys)
    with base.blas_single_thread():
        assert set(blas_threads()) == {1}
    assert base._BLAS[0] is not ctl
