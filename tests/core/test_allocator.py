"""The glibc malloc tuning: applied once on glibc, never over a user's own settings."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# a fresh process each: the settings are process-wide and applied once
PROBE = """
import ctypes, json, resource
from cellbag.core.allocator import tune_allocator
first = tune_allocator()
again = tune_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def batch(size=256 << 20):  # a buffer the size of a batch's activations, written and freed
    p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
batch(); batch()
before = faults()
batch()
print(json.dumps({"state": first, "same": first is again, "faults": faults() - before}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("CELLBAG_MALLOC", None)
    clean.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuned_buffers_are_reused_not_faulted_in_again():
    got = probe()
    assert got["same"]
    assert got["state"]["applied"] is True
    assert set(got["state"]["settings"]) == {"M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "M_TOP_PAD"}
    # 256 MiB is 65,536 pages (untuned: faulted in again each time); tuned: reused
    assert got["faults"] < 2_000


@pytest.mark.parametrize(
    "env, why",
    [
        ({"CELLBAG_MALLOC": "default"}, "CELLBAG_MALLOC=default"),
        ({"MALLOC_TOP_PAD_": "1000"}, "MALLOC_TOP_PAD_ is set"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
    ],
)
def test_user_settings_win(env, why):
    got = probe(**env)
    assert got["state"]["applied"] is False
    assert got["state"]["settings"] == {}
    assert why in got["state"]["reason"]
