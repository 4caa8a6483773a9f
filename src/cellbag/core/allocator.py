"""glibc malloc settings that stop the page-fault storm of large, short-lived tensors.

A CPU forward pass allocates and frees activation buffers of tens to hundreds of MB per
batch. glibc serves anything above its mmap threshold (128 KiB, rising to at most 32 MiB)
with a fresh ``mmap`` and gives it back with ``munmap`` on free, and trims the heap's free
top beyond 128 KiB: every batch then faults its buffers in again page by page, zeroed by
the kernel. Measured with ``cellbag featurize`` on real lymphocytosis JPEGs (EfficientNet-
Lite0, batch 64, 6 patients / 472 cells, 2 cores at load 5): 6.07 M minor faults, user 26.0
s, sys 15.0 s, wall 63 s; tuned: 0.47 M faults, user 23.5 s, sys 1.7 s, wall 28 s
(``benchmarks/featurize.py --data DIR --compare`` prints the same figures for any cohort).
cv's torch heads (small bags) fault no less when tuned, so cv leaves glibc as it is.

:func:`tune_allocator` sets, through ``mallopt`` (ctypes, glibc only; elsewhere a no-op):

- ``M_MMAP_THRESHOLD`` 1 GiB: buffers under 1 GiB come from the heap and are reused;
- ``M_TRIM_THRESHOLD`` 2 GiB - 1 (``mallopt`` takes an ``int``): freed memory stays mapped
  for the next batch instead of being returned and faulted in again;
- ``M_TOP_PAD`` 64 MiB: the heap grows in steps of at least 64 MiB (fewer ``brk`` calls).

The price is a resident size that stays at the process's peak until it exits (freed
buffers are kept for reuse), which is what a featurize / training process wants. A user's
own settings win: when any ``MALLOC_*_`` variable or a ``glibc.malloc`` tunable is in the
environment nothing is changed, and ``CELLBAG_MALLOC=default`` turns the tuning off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

SETTINGS = {  # mallopt parameter -> value
    "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 1 << 30),
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, (1 << 31) - 1),
    "M_TOP_PAD": (M_TOP_PAD, 64 << 20),
}
USER_ENV = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
SWITCH = "CELLBAG_MALLOC"  # "default" leaves glibc as it is

_lock = threading.Lock()
_state: dict[str, object] | None = None


def _user_settings() -> str | None:
    """Why the allocator is left alone (the user's own settings), or None."""
    if os.environ.get(SWITCH, "").strip().lower() in ("default", "off", "0", "no"):
        return f"{SWITCH}={os.environ[SWITCH]}"
    for name in USER_ENV:
        if name in os.environ:
            return f"{name} is set"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    return None


def _mallopt():
    """glibc's ``mallopt``, or None on another C library or system."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def tune_allocator() -> dict[str, object]:
    """Apply the settings once per process (see the module docstring); return what holds.

    The result: ``{"applied": bool, "reason": str, "settings": {name: value}}``. Safe to
    call from anywhere, any number of times; only the first call acts.
    """
    global _state
    with _lock:
        if _state is not None:
            return _state
        why = _user_settings()
        fn = None if why else _mallopt()
        if why is None and fn is None:
            why = "not glibc"
        applied: dict[str, int] = {}
        if fn is not None:
            for name, (param, value) in SETTINGS.items():
                if fn(param, value) == 1:
                    applied[name] = value
        _state = {
            "applied": bool(applied),
            "reason": why or ("mallopt" if applied else "mallopt refused"),
            "settings": applied,
        }
        return _state
