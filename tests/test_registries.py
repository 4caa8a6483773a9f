"""Registries: what the CLI lists (read from source, without importing torch) is what the
registries hold, and a new adapter kind is one decorated class."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cellbag.core.registry import declared_names


def test_cli_head_names_are_the_registered_heads():
    from cellbag.aggregate.registry import list_heads

    assert declared_names("cellbag.aggregate.heads", "register_head") == tuple(list_heads())


def test_cli_adapter_names_are_the_registered_adapters():
    from cellbag.featurize.adapters import ADAPTER_KINDS, list_adapters

    names = declared_names("cellbag.featurize.adapter_kinds", "register_adapter")
    assert names == tuple(sorted(list_adapters())) == tuple(sorted(ADAPTER_KINDS))
    assert {"lora", "bottleneck", "adaptformer", "prompt"} <= set(names)


def test_a_registered_adapter_kind_attaches(monkeypatch):
    import torch
    from torch import nn

    from cellbag.featurize import adapters as ad

    ad.list_adapters()
    monkeypatch.setattr(ad._REGISTRY, "entries", dict(ad._REGISTRY.entries))  # kept apart

    @ad.register_adapter("scale_test")
    @dataclass(frozen=True)
    class ScaleConfig:
        init: float = 1.0

        def attach(self, model: nn.Module) -> list:
            model.adapter_scale = ad.AdapterModule()
            model.adapter_scale.s = nn.Parameter(torch.tensor(self.init))
            return [model.register_forward_hook(lambda m, a, out: out * m.adapter_scale.s)]

    model = nn.Linear(3, 2)
    ad.add_adapter(model, "scale_test", init=2.0)
    assert "scale_test" in ad.list_adapters()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["adapter_scale.s"]
    assert ad.adapter_info(model) == {"kind": "scale_test", "config": {"init": 2.0}}
    with pytest.raises(ad.AdapterError, match="unknown option"):
        ad.make_config("scale_test", rank=3)
    with pytest.raises(ad.AdapterError, match="unknown adapter kind 'nope'"):
        ad.make_config("nope")
