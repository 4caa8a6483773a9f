"""Pixels to model input, and the augmentation that respects cells.

Every path from decoded uint8 pixels to a model (featurize, fine-tuning, MAE,
distillation, image queries) normalises with :func:`normalize`, so a cell gives the same
input tensor whichever stage reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` to float32 ``(x / 255 - mean) / std`` (a new tensor), in
    channels-last memory format when asked (faster for CNNs)."""
    x = x.to(torch.float32, copy=True).div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    x = x.sub_(m).div_(s)
    if channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def hwc_to_chw(x: torch.Tensor) -> torch.Tensor:
    """A ``(B, H, W, 3)`` batch viewed as ``(B, 3, H, W)``."""
    return x.permute(0, 3, 1, 2)


def flip_rotate(
    x: torch.Tensor, generator: torch.Generator, channels_first: bool = True
) -> torch.Tensor:
    """Random horizontal flip and quarter turn per image of a batch (cells have no
    orientation). ``channels_first``: ``(B, C, H, W)``, else ``(B, H, W, C)``. The flips
    are drawn before the turns, one each per image, from ``generator``."""
    b = x.shape[0]
    h, w = (-2, -1) if channels_first else (-3, -2)
    flips = torch.randint(0, 2, (b,), generator=generator).tolist()
    turns = torch.randint(0, 4, (b,), generator=generator).tolist()
    out = []
    for i in range(b):
        xi = x[i]
        if flips[i]:
            xi = xi.flip(w)
        if turns[i]:
            xi = torch.rot90(xi, turns[i], dims=(h, w))
        out.append(xi)
    return torch.stack(out)
