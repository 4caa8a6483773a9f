"""Encoders (registry, weight sources, transforms) and the featurize pipeline.

Names are imported lazily so that importing :mod:`cellbag.featurize` (for example via
``cellbag.featurize.adapters``) stays cheap until an encoder is needed.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "DEFAULT_ENCODER": "cellbag.featurize.registry",
    "Encoder": "cellbag.featurize.registry",
    "EncoderError": "cellbag.featurize.errors",
    "Preset": "cellbag.featurize.registry",
    "create_encoder": "cellbag.featurize.registry",
    "encoder_from_metadata": "cellbag.featurize.registry",
    "get_preset": "cellbag.featurize.registry",
    "list_presets": "cellbag.featurize.registry",
    "register_encoder": "cellbag.featurize.registry",
    "WeightsError": "cellbag.featurize.errors",
    "FeaturizeError": "cellbag.featurize.errors",
    "AdapterError": "cellbag.featurize.errors",
    "TrainingError": "cellbag.featurize.errors",
    "FeaturizeReport": "cellbag.featurize.pipeline",
    "featurize": "cellbag.featurize.pipeline",
    "run_featurize": "cellbag.featurize.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cellbag.featurize' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
