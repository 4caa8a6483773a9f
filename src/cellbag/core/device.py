"""One device and precision resolver for every stage that runs torch.

``auto`` picks CUDA when a GPU is present, else the CPU. Precision ``auto`` is bf16
autocast on a CUDA GPU that supports it and fp32 everywhere else: bf16 autocast is far
slower than fp32 on most CPUs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from cellbag.errors import CellbagError

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(CellbagError, ValueError):
    """A device or precision cannot be used as asked."""


@dataclass(frozen=True)
class Device:
    """Where and how to run: the torch device and the precision (fp32, bf16 or fp16)."""

    device: torch.device
    precision: str = "fp32"

    def __str__(self) -> str:
        return str(self.device)

    @property
    def type(self) -> str:
        return self.device.type

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def autocast(self) -> torch.dtype | None:
        """The autocast dtype (None for fp32)."""
        return _AUTOCAST[self.precision]

    def context(self) -> contextlib.AbstractContextManager:
        """An autocast context of the precision on the device (a no-op for fp32)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    def workers(self) -> int:
        """Image-decoding workers: several on a GPU machine, none on a CPU (there the model
        is the bottleneck and workers would compete with it for cores)."""
        if not self.is_cuda:
            return 0
        return max(1, min(8, (os.cpu_count() or 2) - 1))


def resolve_device(
    device: str | None = "auto",
    precision: str | None = "auto",
    error: type[Exception] = DeviceError,
) -> Device:
    """``device``: auto (None), cpu, cuda[:N] or mps; ``precision``: auto (None), fp32,
    bf16 or fp16. Raises ``error`` (a stage's own error class) naming the bad value."""
    name = (device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise error(f"device {name!r} asked, but no CUDA GPU is available")
    if name != "cpu" and not name.startswith(("cuda", "mps")):
        raise error(f"unknown device {name!r} (auto, cpu, cuda or mps)")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise error(f"unknown device {name!r} ({e})") from None
    prec = (precision or "auto").lower()
    if prec == "auto":
        bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        prec = "bf16" if bf16 else "fp32"
    if prec not in PRECISIONS:
        raise error(f"unknown precision {prec!r} (auto, {', '.join(PRECISIONS)})")
    return Device(dev, prec)
