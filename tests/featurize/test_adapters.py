"""Adapters on timm ViTs: identity at init, frozen base, prompt token bookkeeping, save/load."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from cellbag.core.io import file_sha256
from cellbag.featurize.adapters import (
    AdapterError,
    adapter_info,
    adapter_state_dict,
    add_adapter,
    base_state_dict,
    count_parameters,
    is_adapter_param,
    load_adapter,
    save_adapter,
)

torch.set_num_threads(2)
SIZE = 32  # 2x2 patches of 16 px: fast, and enough tokens to check the bookkeeping


def vit(name: str = "vit_tiny_patch16_224", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=0, img_size=SIZE, **kw).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def perturb_adapter(model: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter_param(name):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize(
    "kind,cfg",
    [
        ("lora", {"rank": 4, "alpha": 8, "targets": ["q", "k", "v"]}),
        ("lora", {"rank": 2, "targets": ["v"]}),
        ("bottleneck", {"reduction": 8}),
        ("adaptformer", {"hidden": 16, "scale": 0.1}),
    ],
)
def test_adapter_is_identity_at_init_and_only_adapter_trains(kind, cfg, images):
    model = vit()
    with torch.no_grad():
        base_tokens, base_pooled = model.forward_features(images), model(images)
    add_adapter(model, kind, **cfg)
    with torch.no_grad():
        tokens, pooled = model.forward_features(images), model(images)
    torch.testing.assert_close(tokens, base_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, base_pooled, rtol=0, atol=1e-6)

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(is_adapter_param(n) for n in trainable)
    n_train, n_total = count_parameters(model)
    assert n_train == sum(v.numel() for v in adapter_state_dict(model).values())
    assert n_total == n_train + sum(v.numel() for v in base_state_dict(model).values())
    assert adapter_info(model)["kind"] == kind

    # one optimiser step moves the output: the adapter is wired into the forward pass
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model(images).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        assert (model(images) - base_pooled).abs().max() > 1e-4


def test_lora_scaling_and_targets():
    model = vit()
    add_adapter(model, "lora", rank=2, alpha=6, targets=["q"])
    qkv = model.blocks[0].attn.qkv
    lora = qkv.adapter_lora
    assert not hasattr(lora, "b_k") and not hasattr(lora, "b_v")
    with torch.no_grad():
        lora.b_q.normal_()
    x = torch.randn(5, qkv.in_features)
    with torch.no_grad():
        out = qkv(x)
        base = torch.nn.functional.linear(x, qkv.weight, qkv.bias)
    d = qkv.in_features
    expected_q = base[:, :d] + (6 / 2) * x @ lora.a_q.t() @ lora.b_q.t()
    torch.testing.assert_close(out[:, :d], expected_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, d:], base[:, d:])  # k and v untouched


def _manual_prompt_forward(model, x, prompts, npt, deep):
    """Reference VPT: insert after the prefix tokens, replace per block (deep), drop at end."""
    t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    n = prompts[0].shape[0]
    t = torch.cat([t[:, :npt], prompts[0].expand(len(x), -1, -1), t[:, npt:]], dim=1)
    for i, blk in enumerate(model.blocks):
        if deep and i > 0:
            t = torch.cat([t[:, :npt], prompts[i].expand(len(x), -1, -1), t[:, npt + n :]], 1)
        t = _block_no_hooks(blk, t)
    t = torch.cat([t[:, :npt], t[:, npt + n :]], dim=1)
    return model.norm(t)


def _block_no_hooks(blk, t):
    """timm's Block.forward, spelled out so the prompt hooks on the block do not fire."""
    t = t + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(t))))
    return t + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(t))))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch16_224"])
@pytest.mark.parametrize("mode", ["shallow", "deep"])
def test_prompt_keeps_token_count_and_matches_reference(name, mode, images):
    model = vit(name)
    with torch.no_grad():
        base = model.forward_features(images)
    add_adapter(model, "prompt", tokens=5, mode=mode)
    seen = []
    hooks = [
        b.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1])) for b in model.blocks
    ]
    with torch.no_grad():
        out = model.forward_features(images)
        pooled = model(images)
    for h in hooks:
        h.remove()
    assert out.shape == base.shape  # sequence length unchanged at the output
    assert seen == [base.shape[1] + 5] * (2 * len(model.blocks))  # never grows block to block
    assert pooled.shape == (len(images), model.embed_dim)
    assert not torch.allclose(out, base)
    blocks_with = [b for b in model.blocks if hasattr(b, "adapter_prompt")]
    assert len(blocks_with) == (len(model.blocks) if mode == "deep" else 1)
    assert blocks_with[0].adapter_prompt.tokens.shape == (5, model.embed_dim)  # dim from model
    prompts = [b.adapter_prompt.tokens for b in blocks_with]
    with torch.no_grad():
        ref = _manual_prompt_forward(
            model, images, prompts, model.num_prefix_tokens, mode == "deep"
        )
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_prompt_with_register_tokens(images):
    model = vit("vit_small_patch16_224", reg_tokens=4)
    assert model.num_prefix_tokens == 5
    with torch.no_grad():
        base = model.forward_features(images)
    add_adapter(model, "prompt", tokens=3, mode="deep")
    with torch.no_grad():
        out = model.forward_features(images)
        prompts = [b.adapter_prompt.tokens for b in model.blocks]
        ref = _manual_prompt_forward(model, images, prompts, 5, True)
    assert out.shape == base.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_save_and_load_roundtrip(tmp_path, images):
    model = vit()
    add_adapter(model, "lora", rank=4, alpha=8, targets=["q", "v"])
    perturb_adapter(model)
    with torch.no_grad():
        want = model(images)
    folder = save_adapter(model, tmp_path / "ad", base_weights={"source": "none", "sha256": None})
    tensors = load_file(str(folder / "adapter.safetensors"))
    assert tensors and all(is_adapter_param(k) for k in tensors)
    doc = json.loads((folder / "adapter.json").read_text())
    assert doc["kind"] == "lora" and doc["config"]["rank"] == 4
    assert doc["base_model"] == "vit_tiny_patch16_224"

    fresh = vit()
    info = load_adapter(fresh, folder)
    assert len(info["sha256"]) == 64 and info["kind"] == "lora"
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), want)
    # base weights unchanged by the adapter: a plain timm state dict still loads strictly
    plain = vit(seed=9)
    plain.load_state_dict(base_state_dict(fresh), strict=True)


def test_load_adapter_errors(tmp_path):
    model = vit()
    add_adapter(model, "bottleneck")
    folder = save_adapter(model, tmp_path / "ad")
    with pytest.raises(AdapterError, match="already has"):
        add_adapter(model, "lora")
    with pytest.raises(AdapterError, match="weights are not those"):
        load_adapter(vit(seed=5), folder)  # other base weights
    with pytest.raises(AdapterError, match="vit_small"):
        bad = tmp_path / "small"
        m = vit("vit_small_patch16_224")
        add_adapter(m, "lora")
        save_adapter(m, bad)
        load_adapter(vit(), bad)
    with pytest.raises(AdapterError, match="not found"):
        load_adapter(vit(), tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter.json").write_text((folder / "adapter.json").read_text())
    with pytest.raises(AdapterError, match="adapter.safetensors: missing"):
        load_adapter(vit(), tmp_path / "half")
    # keys that do not fit (a truncated safetensors)
    tensors = load_file(str(folder / "adapter.safetensors"))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(folder / "adapter.safetensors"))
    with pytest.raises(AdapterError, match="keys do not match"):
        load_adapter(vit(), folder)


def test_bad_configs_and_models():
    with pytest.raises(AdapterError, match="unknown adapter kind"):
        add_adapter(vit(), "dora")
    with pytest.raises(AdapterError, match="unknown option"):
        add_adapter(vit(), "lora", rnak=4)
    with pytest.raises(AdapterError, match="targets"):
        add_adapter(vit(), "lora", targets=["q", "x"])
    with pytest.raises(AdapterError, match="mode"):
        add_adapter(vit(), "prompt", mode="wide")
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    with pytest.raises(AdapterError, match="needs a timm Vision Transformer"):
        add_adapter(cnn, "lora")


def test_registry_folds_adapter_into_encoder_id(tmp_path):
    from cellbag.featurize import create_encoder

    base = create_encoder("vit_tiny_patch16_224", weights="none", image_size=SIZE)
    model = create_encoder("vit_tiny_patch16_224", weights="none", image_size=SIZE).model
    add_adapter(model, "adaptformer", hidden=8)
    perturb_adapter(model)
    folder = save_adapter(model, tmp_path / "ad")
    adapted = create_encoder(
        "vit_tiny_patch16_224", weights="none", image_size=SIZE, adapter=folder
    )
    assert adapted.id != base.id
    assert adapted.metadata["adapter_sha256"] == file_sha256(folder / "adapter.safetensors")
    from PIL import Image

    imgs = [Image.new("RGB", (40, 40), (200, 120, 150)), Image.new("RGB", (40, 40), (90, 60, 140))]
    a, b = base.embed(imgs), adapted.embed(imgs)
    assert a.shape == b.shape and not (a == b).all()
