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
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellbag.core.io import file_sha256, write_bytes
from cellbag.featurize.errors import AdapterError

ADAPTER_KINDS = ("lora", "bottleneck", "adaptformer", "prompt")
ADAPTER_JSON = "adapter.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
FORMAT = "cellbag-adapter"
FORMAT_VERSION = 1
_STATE_ATTR = "_cellbag_adapter"


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class LoraConfig:
    """LoRA on the fused qkv projection: ``W x + (alpha / rank) * B A x`` per target."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "v")
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 1:
            raise AdapterError(f"lora: rank must be >= 1, got {self.rank}")
        bad = [t for t in self.targets if t not in ("q", "k", "v")]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise AdapterError(f"lora: targets must be distinct among q, k, v; got {self.targets}")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"lora: dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class BottleneckConfig:
    """Houlsby adapters after attention and MLP: ``h + up(act(down(h)))``."""

    reduction: int = 4
    hidden: int | None = None  # overrides reduction when set
    positions: tuple[str, ...] = ("attn", "mlp")

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", tuple(self.positions))
        bad = [p for p in self.positions if p not in ("attn", "mlp")]
        if bad or not self.positions:
            raise AdapterError(
                f"bottleneck: positions must be among attn, mlp; got {self.positions}"
            )
        if self.hidden is not None and self.hidden < 1 or self.reduction < 1:
            raise AdapterError("bottleneck: hidden and reduction must be >= 1")


@dataclass(frozen=True)
class AdaptFormerConfig:
    """Parallel adapter on the MLP branch: ``mlp(x) + scale * up(relu(down(x)))``."""

    hidden: int = 64
    scale: float = 0.1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise AdapterError(f"adaptformer: hidden must be >= 1, got {self.hidden}")


@dataclass(frozen=True)
class PromptConfig:
    """Visual prompt tuning: ``tokens`` prompts, ``shallow`` (first block) or ``deep``."""

    tokens: int = 8
    mode: str = "shallow"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise AdapterError(f"prompt: tokens must be >= 1, got {self.tokens}")
        if self.mode not in ("shallow", "deep"):
            raise AdapterError(f"prompt: mode must be 'shallow' or 'deep', got {self.mode!r}")


_CONFIGS: dict[str, type] = {
    "lora": LoraConfig,
    "bottleneck": BottleneckConfig,
    "adaptformer": AdaptFormerConfig,
    "prompt": PromptConfig,
}


def make_config(kind: str, **cfg: Any) -> Any:
    """Validate ``cfg`` for ``kind`` and return its frozen config."""
    if kind not in _CONFIGS:
        raise AdapterError(
            f"unknown adapter kind {kind!r}; choose one of {', '.join(ADAPTER_KINDS)}"
        )
    cls = _CONFIGS[kind]
    names = set(cls.__dataclass_fields__)
    unknown = sorted(set(cfg) - names)
    if unknown:
        raise AdapterError(f"{kind}: unknown option(s) {unknown}; known: {sorted(names)}")
    return cls(**cfg)


# ----------------------------------------------------------------------------- modules


class AdapterModule(nn.Module):
    """Base class of every adapter module (how adapter parameters are recognised)."""


class LoraQKV(AdapterModule):
    """Low-rank deltas for the q/k/v slices of a fused ``qkv`` Linear."""

    def __init__(self, in_features: int, out_features: int, cfg: LoraConfig) -> None:
        super().__init__()
        if out_features % 3:
            raise AdapterError(f"lora: qkv out_features {out_features} is not divisible by 3")
        self.targets = cfg.targets
        self.part = out_features // 3
        self.scaling = cfg.scaling
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        for t in cfg.targets:
            a = nn.Parameter(torch.empty(cfg.rank, in_features))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            setattr(self, f"a_{t}", a)
            setattr(self, f"b_{t}", nn.Parameter(torch.zeros(self.part, cfg.rank)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        parts = []
        for t in ("q", "k", "v"):
            if t in self.targets:
                a, b = getattr(self, f"a_{t}"), getattr(self, f"b_{t}")
                parts.append((x @ a.t().to(x.dtype)) @ b.t().to(x.dtype) * self.scaling)
            else:
                parts.append(x.new_zeros(*x.shape[:-1], self.part))
        return torch.cat(parts, dim=-1)


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


class Prompts(AdapterModule):
    """Prompt tokens ``(tokens, dim)`` inserted before one block."""

    def __init__(self, tokens: int, dim: int, patch_area: int, dropout: float) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(tokens, dim))
        val = math.sqrt(6.0 / float(3 * patch_area + dim))  # VPT's xavier-style init
        nn.init.uniform_(self.tokens, -val, val)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.dropout(self.tokens).to(dtype).unsqueeze(0).expand(batch, -1, -1)


# ----------------------------------------------------------------------------- hooks
# Hooks are module-level functions taking the module, so deepcopy/pickle keep working.


def _lora_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.adapter_lora(args[0])


def _residual_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.adapter_bottleneck(output)


def _parallel_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + module.adapter_adaptformer_scale * module.adapter_adaptformer(args[0])


def _prompt_insert_hook(block: nn.Module, args: tuple) -> tuple:
    x, npt = args[0], block._cellbag_prefix
    p = block.adapter_prompt(x.shape[0], x.dtype)
    return (torch.cat([x[:, :npt], p, x[:, npt:]], dim=1), *args[1:])


def _prompt_replace_hook(block: nn.Module, args: tuple) -> tuple:
    x, npt = args[0], block._cellbag_prefix
    p = block.adapter_prompt(x.shape[0], x.dtype)
    return (torch.cat([x[:, :npt], p, x[:, npt + p.shape[1] :]], dim=1), *args[1:])


def _prompt_remove_hook(block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    npt, n = block._cellbag_prefix, block._cellbag_prompt_tokens
    return torch.cat([output[:, :npt], output[:, npt + n :]], dim=1)


# ----------------------------------------------------------------------------- attach


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _vit_blocks(model: nn.Module, kind: str) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        raise AdapterError(
            f"adapter {kind!r} needs a timm Vision Transformer (model.blocks); "
            f"{_model_name(model)} has none"
        )
    return list(blocks)


def _embed_dim(model: nn.Module, blocks: list[nn.Module]) -> int:
    dim = getattr(model, "embed_dim", None)
    if isinstance(dim, int):
        return dim
    norm = getattr(blocks[0], "norm1", None)
    shape = getattr(norm, "normalized_shape", None)
    if shape:
        return int(shape[0])
    raise AdapterError(f"cannot read the token dim of {_model_name(model)}")


def _attach_lora(model: nn.Module, cfg: LoraConfig) -> list[torch.utils.hooks.RemovableHandle]:
    handles = []
    for i, block in enumerate(_vit_blocks(model, "lora")):
        qkv = getattr(getattr(block, "attn", None), "qkv", None)
        if not isinstance(qkv, nn.Linear):
            raise AdapterError(
                f"lora: block {i} of {_model_name(model)} has no fused attn.qkv Linear"
            )
        qkv.adapter_lora = LoraQKV(qkv.in_features, qkv.out_features, cfg).to(qkv.weight.device)
        handles.append(qkv.register_forward_hook(_lora_hook))
    return handles


def _attach_bottleneck(model: nn.Module, cfg: BottleneckConfig) -> list:
    blocks = _vit_blocks(model, "bottleneck")
    dim = _embed_dim(model, blocks)
    hidden = cfg.hidden or max(1, dim // cfg.reduction)
    handles = []
    for i, block in enumerate(blocks):
        for pos in cfg.positions:
            sub = getattr(block, pos, None)
            if not isinstance(sub, nn.Module):
                raise AdapterError(f"bottleneck: block {i} of {_model_name(model)} has no {pos}")
            device = next(block.parameters()).device
            sub.adapter_bottleneck = Bottleneck(dim, hidden, act="gelu").to(device)
            handles.append(sub.register_forward_hook(_residual_hook))
    return handles


def _attach_adaptformer(model: nn.Module, cfg: AdaptFormerConfig) -> list:
    blocks = _vit_blocks(model, "adaptformer")
    dim = _embed_dim(model, blocks)
    handles = []
    for i, block in enumerate(blocks):
        mlp = getattr(block, "mlp", None)
        if not isinstance(mlp, nn.Module):
            raise AdapterError(f"adaptformer: block {i} of {_model_name(model)} has no mlp")
        device = next(block.parameters()).device
        mlp.adapter_adaptformer = Bottleneck(dim, cfg.hidden, act="relu", dropout=cfg.dropout).to(
            device
        )
        mlp.adapter_adaptformer_scale = float(cfg.scale)
        handles.append(mlp.register_forward_hook(_parallel_hook))
    return handles


def _attach_prompt(model: nn.Module, cfg: PromptConfig) -> list:
    blocks = _vit_blocks(model, "prompt")
    npt = getattr(model, "num_prefix_tokens", None)
    if not isinstance(npt, int):
        raise AdapterError(f"prompt: {_model_name(model)} does not say its num_prefix_tokens")
    dim = _embed_dim(model, blocks)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", (16, 16))
    area = int(patch[0] * patch[1]) if isinstance(patch, (tuple, list)) else int(patch) ** 2
    device = next(model.parameters()).device
    handles = []
    for i, block in enumerate(blocks):
        block._cellbag_prefix = npt
        if i == 0 or cfg.mode == "deep":
            block.adapter_prompt = Prompts(cfg.tokens, dim, area, cfg.dropout).to(device)
            hook = _prompt_insert_hook if i == 0 else _prompt_replace_hook
            handles.append(block.register_forward_pre_hook(hook))
    blocks[-1]._cellbag_prompt_tokens = cfg.tokens
    handles.append(blocks[-1].register_forward_hook(_prompt_remove_hook))
    return handles


_ATTACH = {
    "lora": _attach_lora,
    "bottleneck": _attach_bottleneck,
    "adaptformer": _attach_adaptformer,
    "prompt": _attach_prompt,
}


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
            f"{_model_name(model)} already has a {getattr(model, _STATE_ATTR).kind!r} adapter"
        )
    handles = _ATTACH[kind](model, config)
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
        raise AdapterError(f"{_model_name(model)} has no adapter to save (call add_adapter first)")
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
        "base_model": meta.pop("base_model", None) or _model_name(model),
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
        or doc.get("kind") not in ADAPTER_KINDS
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
    name = _model_name(model)
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
