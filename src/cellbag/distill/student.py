"""The student: a small timm encoder (optionally with an adapter) + a gated attention-MIL
head with clinical fusion, trained end to end on raw image bags.

The encoder is built by the encoder registry (:func:`cellbag.featurize.create_encoder`),
so the student reads pixels exactly as ``cellbag featurize`` does (same decoding, resize,
normalisation and pooled ``pre_logits`` features): a student's cell embeddings equal
those of featurizing with its encoder.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cellbag.core.mil import ClassifierOnPooled, GatedAttentionPool, masked_mean, pad_bags
from cellbag.core.pixels import hwc_to_chw, normalize
from cellbag.distill.errors import DistillError

DEFAULT_STUDENT = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of the student's attention-MIL head; ``context``: each cell is also embedded
    relative to the mean of its bag (as abmil's default, see
    :mod:`cellbag.aggregate.torch_head`), so a shift shared by a patient's cells (stain,
    scanner) can cancel. Students saved before it existed load with ``context=False``."""

    hidden: int = 128
    attn_dim: int = 64
    dropout: float = 0.1
    context: bool = True


class GatedAttentionMIL(nn.Module):
    """Gated attention-MIL (Ilse et al. 2018) over cell embeddings, with clinical fusion,
    built from the blocks the stage-2 heads use (:mod:`cellbag.core.mil`).

    cells -> LayerNorm -> Linear+ReLU -> gated attention pooling -> logit = linear on the
    (dropped-out) pooled vector + linear on the clinical features. Clinical features join
    after pooling, so attention stays image-driven. With ``cfg.context`` the Linear sees
    each normalised cell ``u`` and ``u`` minus its bag's mean: ``W u + C (u - mean(u))``.
    """

    def __init__(self, dim: int, n_clinical: int, cfg: HeadConfig = HeadConfig()) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.embed = nn.Sequential(nn.Linear(dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.context = nn.Linear(dim, cfg.hidden, bias=False) if cfg.context else None
        self.pool = GatedAttentionPool(cfg.hidden, cfg.attn_dim)
        self.classifier = ClassifierOnPooled(cfg.hidden, n_clinical, cfg.dropout)
        self.n_clinical = n_clinical

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, clinical: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, L, D), ``mask`` (B, L) True for real cells, ``clinical`` (B, C) ->
        (logits (B,), attention (B, L) summing to 1 over the real cells)."""
        u = self.norm(x.float())
        if self.context is None:
            h = self.embed(u)
        else:
            pre = self.embed[0](u) + self.context(u - masked_mean(u, mask).unsqueeze(1))
            h = self.embed[2](torch.relu(pre))
        pooled, a = self.pool(h, mask)
        return self.classifier(pooled, clinical.float() if self.n_clinical else None), a


def upgrade_head_state(state: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """A format-1 student's weights in today's layout: the attention's ``head.V/U/w`` moved
    under ``head.pool``; the single output layer on ``[pooled ; clinical]`` split into the
    pooled and clinical linear terms (the same function)."""
    out = {}
    for k, v in state.items():
        if k.startswith(("head.V.", "head.U.", "head.w.")):
            out["head.pool." + k[len("head.") :]] = v
        elif k == "head.out.weight":
            out["head.classifier.out.weight"] = v[:, :hidden].contiguous()
            if v.shape[1] > hidden:
                out["head.classifier.clinical.weight"] = v[:, hidden:].contiguous()
        elif k == "head.out.bias":
            out["head.classifier.out.bias"] = v
        else:
            out[k] = v
    return out


@dataclass(frozen=True)
class StudentSpec:
    """Everything that rebuilds a student's architecture (saved in ``config.json``)."""

    encoder: str = DEFAULT_STUDENT
    weights: str | None = None  # the source the encoder started from (None: preset default)
    image_size: int | None = None
    adapter: dict[str, Any] | None = None  # {"kind", "config"} or None
    head: HeadConfig = field(default_factory=HeadConfig)
    n_clinical: int = 6
    teacher_dim: int | None = None  # width of the projection for the embedding loss

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentSpec:
        d = dict(d)
        d["head"] = HeadConfig(**{"context": False, **d.get("head", {})})  # older: none
        return cls(**d)


class StudentModel(nn.Module):
    """Encoder + attention-MIL head (+ a projection to the teacher's embedding space,
    used only by the embedding loss and not part of the deployed model)."""

    def __init__(
        self,
        encoder: nn.Module,
        dim: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        spec: StudentSpec,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = GatedAttentionMIL(dim, spec.n_clinical, spec.head)
        self.projection = nn.Linear(dim, spec.teacher_dim) if spec.teacher_dim else None
        self.spec = spec
        self.dim = dim
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.channels_last = not hasattr(encoder, "patch_embed")
        self.freeze_norm = True

    def train(self, mode: bool = True) -> StudentModel:
        """Train mode, but batch-norm layers keep their running statistics (bags give small,
        correlated batches; frozen statistics also make train and eval features agree)."""
        super().train(mode)
        if mode and self.freeze_norm:
            for m in self.encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, S, S, 3) -> normalised float (N, 3, S, S), as the featurizer does."""
        x = hwc_to_chw(pixels.to(self.mean.device))
        return normalize(x, self.mean, self.std, channels_last=self.channels_last)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_head(self.encoder.forward_features(x), pre_logits=True)

    def embed_cells(
        self,
        pixels: torch.Tensor,
        chunk: int = 64,
        grad_checkpointing: bool = False,
        autocast: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Cell embeddings (N, dim) float32 of uint8 pixels, in sub-batches of ``chunk``.

        With ``grad_checkpointing`` each sub-batch's activations are recomputed in the
        backward pass, so memory grows with ``chunk``, not with the number of cells.
        """
        out = []
        ctx = (
            torch.autocast(device_type=self.mean.device.type, dtype=autocast)
            if autocast is not None
            else contextlib.nullcontext()
        )
        for s in range(0, pixels.shape[0], chunk):
            x = self.normalise(pixels[s : s + chunk])
            with ctx:
                if grad_checkpointing and torch.is_grad_enabled():
                    f = checkpoint(self._features, x, use_reentrant=False)
                else:
                    f = self._features(x)
            out.append(f.float())
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.mean.device)

    def forward_bags(
        self, embeddings: list[torch.Tensor], clinical: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head over a list of per-bag embeddings -> (logits (B,), attention (B, L), mask)."""
        x, mask = pad_bags(embeddings)
        logits, att = self.head(x, mask, clinical)
        return logits, att, mask


# ----------------------------------------------------------------------------- building


def trainable_parameters(model: StudentModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(encoder parameters that train, head + projection parameters)."""
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    rest = list(model.head.parameters())
    if model.projection is not None:
        rest += list(model.projection.parameters())
    return enc, rest


def freeze_early_layers(encoder: nn.Module, trainable_blocks: int) -> int:
    """Freeze the stem and all but the last ``trainable_blocks`` of ``encoder.blocks`` (timm
    CNNs and ViTs); layers after the blocks stay trainable. Frozen early layers need no
    backward pass, which makes end-to-end training much cheaper on a CPU. Returns the number
    of blocks left trainable."""
    blocks = getattr(encoder, "blocks", None)
    if blocks is None or not hasattr(blocks, "__len__"):
        import warnings

        warnings.warn(
            f"{type(encoder).__name__} has no `blocks`: the whole encoder trains", stacklevel=2
        )
        return -1
    n = len(blocks)
    k = max(0, min(int(trainable_blocks), n))
    seen_blocks = False
    for name, p in encoder.named_parameters():
        if name.startswith("blocks."):
            seen_blocks = True
            p.requires_grad_(int(name.split(".")[1]) >= n - k)
        else:
            p.requires_grad_(seen_blocks)  # stem (before the blocks) frozen, the rest trains
    return k


def build_student(
    spec: StudentSpec,
    adapter: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    weights: str | None = None,
    trainable_blocks: int | None = None,
) -> tuple[StudentModel, Any]:
    """Build a trainable student and the registry :class:`Encoder` it came from.

    ``adapter``: None, an adapter kind (``lora``, ``bottleneck``, ``adaptformer``,
    ``prompt``: a fresh one is added and only it trains in the encoder) or a folder saved
    by ``save_adapter`` (loaded, then trained further). ``weights`` overrides
    ``spec.weights`` (e.g. ``none`` when rebuilding a saved student). ``trainable_blocks``
    (no adapter): train only the last blocks of the encoder (see :func:`freeze_early_layers`).
    """
    from cellbag.featurize import EncoderError, create_encoder
    from cellbag.featurize.adapters import AdapterError, add_adapter, freeze_base, list_adapters

    is_kind = adapter in list_adapters()
    try:
        enc = create_encoder(
            spec.encoder,
            weights=weights if weights is not None else spec.weights,
            image_size=spec.image_size,
            adapter=None if (adapter is None or is_kind) else adapter,
            device=device,
            precision="fp32",
            seed=seed,
        )
    except EncoderError as e:
        raise DistillError(f"student encoder: {e}") from None
    model = enc.model
    info = None
    if adapter is not None:
        try:
            if is_kind:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    add_adapter(model, adapter)
        except AdapterError as e:
            raise DistillError(f"student encoder {spec.encoder}: {e}") from None
        freeze_base(model)
        from cellbag.featurize.adapters import adapter_info

        info = adapter_info(model)
    else:
        model.requires_grad_(True)
        if trainable_blocks is not None and trainable_blocks >= 0:
            freeze_early_layers(model, trainable_blocks)
    spec = StudentSpec(
        encoder=spec.encoder,
        weights=spec.weights if spec.weights is not None else enc.metadata.get("weights"),
        image_size=enc.image_size,
        adapter=info if info is not None else spec.adapter,
        head=spec.head,
        n_clinical=spec.n_clinical,
        teacher_dim=spec.teacher_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        student = StudentModel(model, enc.dim, enc.mean, enc.std, spec)
    return student.to(device), enc
