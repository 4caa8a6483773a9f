"""Parameter-efficient adapters for timm Vision Transformers.

Four kinds, each identity (or, for prompts, token-count preserving) at init:

- ``lora``: low-rank update of the fused ``attn.qkv`` projection, on any of q/k/v,
  scaled by ``alpha / rank``; ``B`` starts at zero.
- ``bottleneck``: Houlsby adapters (down, GELU, up) after the attention and the MLP
  sub-layers, added residually; the up-projection starts at zero.
- ``adaptformer``: a scaled bottleneck parallel to the MLP branch
  (``mlp(x) + s * up(relu(down(x)))``, ``s`` default 0.1); up starts at zero.
- ``prompt``: learnable tokens inserted after the prefix (CLS / register) tokens before
  the first block (``shallow``) or before every block (``deep``), and removed after the
  last block, so the output sequence and pooling are those of the base model.

Adapters attach with forward hooks and child modules, so the base model's parameter
names are unchanged: a plain timm state dict still loads into an adapted model, and the
adapter's own parameters (names containing ``adapter_``) save apart.

Each kind is one file in :mod:`cellbag.featurize.adapter_kinds`: a frozen config class
registered with ``@register_adapter("name")`` whose ``attach(model)`` adds its modules and
hooks; adding an adapter is adding such a file.

Checkpoint format (a folder):

- ``adapter.json``: ``{"format": "cellbag-adapter", "version": 1, "kind", "config",
  "base_model", "base_weights": {"source", "sha256"}, "trainable_parameters",
  "created", ...extra metadata}``;
- ``adapter.safetensors``: the adapter parameters only, keyed by their names in the
  model (e.g. ``blocks.0.attn.qkv.adapter_lora.a_q``).

``load_adapter`` returns the json dict plus ``sha256`` (of ``adapter.safetensors``) and
``path``; the encoder registry folds the digest into the encoder id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellbag.core.io import file_sha256, write_bytes
from cellbag.core.registry import Registry
from cellbag.featurize.errors import AdapterError

ADAPTER_JSON = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT = "cellbag-adapter"
FORMAT_VERSION = 1
_STATE_ATTR = "_cellbag_adapter"


# ----------------------------------------------------------------------------- registry

_REGISTRY = Registry("adapter kind", "cellbag.featurize.adapter_kinds", AdapterError, attr="kind")
register_adapter = _REGISTRY.register  # on a kind's frozen config dataclass with ``attach``
adapter_config_class = _REGISTRY.get
list_adapters = _REGISTRY.names


def __getattr__(name: str) -> Any:
    if name == "ADAPTER_KINDS":  # every registered kind, sorted
        return tuple(list_adapters())
    for cls in (_REGISTRY.get(k) for k in list_adapters()):  # config classes stay importable
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_config(kind: str, **cfg: Any) -> Any:
    """Validate ``cfg`` for ``kind`` and return its frozen config."""
    cls = adapter_config_class(kind)
    names = set(cls.__dataclass_fields__)
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise AdapterError(f"{kind}: unknown option(s) {unknown}; known: {sorted(names)}")
    return cls(**cfg)


# ----------------------------------------------------------------------------- modules


class AdapterModule(nn.Module):
    """Base class of every adapter module (how adapter parameters are recognised)."""


class Bottleneck(AdapterModule):
    """``up(act(down(x)))`` with the up-projection zero-initialised."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x))))


def model_name(model: nn.Module) -> str:
    """The timm architecture of ``model`` (its class name when it has no config)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def vit_blocks(model: nn.Module, kind: str) -> list[nn.Module]:
    """The transformer blocks of a timm ViT (an error naming ``kind`` for other models)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        raise AdapterError(
            f"adapter {kind!r} needs a timm Vision Transformer (model.blocks); "
            f"{model_name(model)} has none"
        )
    return list(blocks)


def embed_dim(model: nn.Module, blocks: list[nn.Module]) -> int:
    """The token width of a timm ViT."""
    dim = getattr(model, "embed_dim", None)
    if isinstance(dim, int):
        return dim
    norm = getattr(blocks[0], "norm1", None)
    shape = getattr(norm, "normalized_shape", None)
    if shape:
        return int(shape[0])
    raise AdapterError(f"cannot read the token dim of {model_name(model)}")


@dataclass
class AdapterState:
    """What ``add_adapter`` attached (kept on the model as ``model._cellbag_adapter``)."""

    kind: str
    config: dict[str, Any]
    handles: list = field(default_factory=list, repr=False)

    def __deepcopy__(self, memo: dict) -> AdapterState:
        # hooks live in the modules' own hook dicts and are copied with them
        return AdapterState(self.kind, dict(self.config), [])


def add_adapter(model: nn.Module, kind: str, **cfg: Any) -> nn.Module:
    """Attach an adapter of ``kind`` to a timm ViT in place and freeze everything else.

    Returns the model. Only adapter parameters have ``requires_grad`` afterwards; add a
    classifier head outside the model (or unfreeze it) when training one.
    """
    config = make_config(kind, **cfg)
    if getattr(model, _STATE_ATTR, None) is not None:
        raise AdapterError(
            f"{model_name(model)} already has a {getattr(model, _STATE_ATTR).kind!r} adapter"
        )
    handles = config.attach(model)
    cfg_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    object.__setattr__(model, _STATE_ATTR, AdapterState(kind, cfg_dict, handles))
    freeze_base(model)
    return model


def adapter_info(model: nn.Module) -> dict[str, Any] | None:
    """``{"kind", "config"}`` of the model's adapter, or None."""
    state = getattr(model, _STATE_ATTR, None)
    return None if state is None else {"kind": state.kind, "config": dict(state.config)}


def is_adapter_param(name: str) -> bool:
    """True for parameter names that belong to an adapter."""
    return any(part.startswith("adapter_") for part in name.split("."))


def freeze_base(model: nn.Module) -> None:
    """``requires_grad`` True for adapter parameters only."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_param(name))


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's parameters, keyed by their names in the model."""
    return {k: v for k, v in model.state_dict().items() if is_adapter_param(k)}


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict without any adapter entry (a plain timm state dict)."""
    return {k: v for k, v in model.state_dict().items() if not is_adapter_param(k)}


def base_digest(model: nn.Module) -> str:
    """sha256 of the base model's parameters (float32; ``pos_embed`` left out because it is
    resampled with the image size): ties an adapter to the weights it was trained on."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if is_adapter_param(name) or name.split(".")[-1] == "pos_embed":
            continue
        t = p.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ----------------------------------------------------------------------------- save / load


def save_adapter(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """Write ``adapter.json`` and ``adapter.safetensors`` into the folder ``path``.

    ``meta`` is stored in the json; recognised keys: ``base_model`` (default: the timm
    architecture), ``base_weights`` (``{"source", "sha256"}``). Files are written to a
    temporary name and renamed, the json last, so a crash never leaves a valid-looking
    half checkpoint.
    """
    from safetensors.torch import save

    info = adapter_info(model)
    if info is None:
        raise AdapterError(f"{model_name(model)} has no adapter to save (call add_adapter first)")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise AdapterError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in adapter_state_dict(model).items()}
    write_bytes(out / ADAPTER_WEIGHTS, save(tensors, metadata={"format": FORMAT}))
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": info["kind"],
        "config": info["config"],
        "base_model": meta.pop("base_model", None) or model_name(model),
        "base_weights": meta.pop("base_weights", None) or {"source": None, "sha256": None},
        "base_digest": base_digest(model),
        "trainable_parameters": int(sum(t.numel() for t in tensors.values())),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    write_bytes(out / ADAPTER_JSON, (json.dumps(doc, indent=2, default=str) + "\n").encode())
    return out


def read_adapter_json(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint folder's ``adapter.json`` (adds ``sha256`` and ``path``)."""
    folder = Path(path)
    js, st = folder / ADAPTER_JSON, folder / ADAPTER_WEIGHTS
    if not folder.is_dir():
        raise AdapterError(f"{folder}: adapter folder not found")
    for f in (js, st):
        if not f.is_file():
            raise AdapterError(
                f"{f}: missing (an adapter folder holds {ADAPTER_JSON} + {ADAPTER_WEIGHTS})"
            )
    try:
        doc = json.loads(js.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"{js}: unreadable adapter json ({e})") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != FORMAT
        or doc.get("kind") not in list_adapters()
    ):
        raise AdapterError(f"{js}: not a cellbag adapter (format/kind missing)")
    if int(doc.get("version", 0)) > FORMAT_VERSION:
        raise AdapterError(
            f"{js}: adapter format version {doc['version']} is newer than this cellbag"
        )
    doc["sha256"] = file_sha256(st)
    doc["path"] = str(folder.resolve())
    return doc


def load_adapter(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Add the adapter saved in folder ``path`` to ``model`` and load its weights.

    Load the base weights first. Returns the ``adapter.json`` dict with ``sha256`` (of
    ``adapter.safetensors``) and ``path`` added. Raises :class:`AdapterError` naming the
    file when the folder is incomplete, the base model differs, or keys/shapes mismatch.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    doc = read_adapter_json(path)
    st = Path(path) / ADAPTER_WEIGHTS
    base = doc.get("base_model")
    name = model_name(model)
    if base and name != type(model).__name__ and base != name:
        raise AdapterError(f"{st}: adapter was trained for {base}, not {name}")
    want = doc.get("base_digest")
    if want and base_digest(model) != want:
        bw = doc.get("base_weights") or {}
        fix = f"--weights {Path(path) / bw['file']}" if bw.get("file") else bw.get("source")
        raise AdapterError(
            f"{st}: the model's weights are not those the adapter was trained on; use {fix}"
        )
    try:
        add_adapter(model, doc["kind"], **doc.get("config", {}))
    except TypeError as e:  # pragma: no cover - config validated by make_config
        raise AdapterError(f"{st}: bad adapter config ({e})") from None
    try:
        tensors = load_file(str(st))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{st}: unreadable safetensors ({e})") from None
    from cellbag.featurize.statedict import state_dict_mismatch

    problem = state_dict_mismatch(tensors, adapter_state_dict(model))
    if problem:
        raise AdapterError(f"{st}: adapter does not fit {name}: {problem}")
    model.load_state_dict(tensors, strict=False)
    return doc
