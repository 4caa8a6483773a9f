"""One featurize run, one file: the settings of ``cellbag featurize`` as a dataclass shared
by the CLI and the Python API (:func:`cellbag.featurize.run_featurize` takes one).

Every run whose encoder is given by name writes its settings beside the embeddings it
fills, ``STORE/embeddings/<encoder id>/featurize.yaml`` (next to the encoder's job lock, so
the store's root and its ``zarr.json`` are untouched, and the file goes when the encoder
does); ``cellbag featurize --config FILE`` replays it, flags given beside it override it,
an unknown key is one line naming it and the file. The file records ``force: false``
whatever the run was given: a replay resumes (a no-op when every block is done) instead of
throwing the embeddings away. ``batch_size``, ``device``, ``workers`` and ``decode`` say
how the run goes, not what it computes (``precision`` does: it is in the encoder id).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from cellbag.core.config import override, read_yaml, write_yaml
from cellbag.featurize.errors import FeaturizeError

CONFIG_NAME = "featurize.yaml"
#: the encoder of a run given none (the registry's DEFAULT_ENCODER; kept literal here so
#: reading a config imports no torch)
DEFAULT_ENCODER_NAME = "tf_efficientnet_lite0"

__all__ = ["CONFIG_NAME", "FeaturizeConfig", "config_path", "read_config", "write_config"]


@dataclass
class FeaturizeConfig:
    """Settings of a featurize run (``cellbag featurize``, :func:`run_featurize`)."""

    data: str | None = None  # cohort: a challenge-layout folder or a manifest CSV
    store: str | None = None  # feature store: a folder or an fsspec URL
    encoder: str = DEFAULT_ENCODER_NAME  # preset or timm model name
    weights: str | None = None  # none | hub | package:NAME | a file (None: the preset's)
    image_size: int | None = None  # None: the preset's
    # centred square kept before the resize: auto (0.57 on smear crops centred on a small
    # cell, else 1: cellbag.featurize.smear) | a fraction | None (1, whole image)
    crop: float | str | None = "auto"
    stain: str = "auto"  # auto (reinhard on smear crops, else none) | none | reinhard
    adapter: str | None = None  # an adapter folder saved by `cellbag finetune`
    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    workers: int | None = None  # decoding threads (None: sized to the device)
    decode: str = "auto"  # auto | cpu | gpu
    chunk_rows: int | None = None  # rows per stored chunk (a new store only)
    block_rows: int | None = None  # rows per write block (a new store only)
    force: bool = False  # recompute this encoder's embeddings from scratch
    update: bool = False  # apply a changed cohort to the store (every encoder)

    def __post_init__(self) -> None:
        for name in ("data", "store", "weights", "adapter"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, os.fspath(value))
        if self.stain is None:
            self.stain = "none"
        if isinstance(self.crop, str) and self.crop != "auto":
            try:
                self.crop = float(self.crop)
            except ValueError:
                raise FeaturizeError(
                    f"crop {self.crop!r}: give auto or a fraction of the side (0.1..1)"
                ) from None

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`run_featurize` (all but data, store, encoder)."""
        out = dataclasses.asdict(self)
        for name in ("data", "store", "encoder"):
            del out[name]
        return out


def config_path(store: str | os.PathLike, encoder_id: str) -> str:
    """Where a run writes its settings: beside the encoder's embeddings in the store."""
    return f"{os.fspath(store).rstrip('/')}/embeddings/{encoder_id}/{CONFIG_NAME}"


def write_config(cfg: FeaturizeConfig, store: str | os.PathLike, encoder_id: str) -> str:
    """Write ``cfg`` (with ``force: false``) beside the encoder's embeddings; its path."""
    saved = dataclasses.replace(cfg, force=False)
    header = (
        f"encoder id {encoder_id}; replay: cellbag featurize --config FILE "
        "(flags beside it override it)"
    )
    return write_yaml(saved, config_path(store, encoder_id), header=header)


def read_config(path: str | os.PathLike) -> FeaturizeConfig:
    """The :class:`FeaturizeConfig` in a ``featurize.yaml`` (one-line error otherwise)."""
    return read_yaml(os.fspath(path), FeaturizeConfig, FeaturizeError)


def with_flags(cfg: FeaturizeConfig, **given: Any) -> FeaturizeConfig:
    """``cfg`` with the flags given beside ``--config`` (those not None)."""
    return override(cfg, **given)
