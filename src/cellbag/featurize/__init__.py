"""Encoders (registry, weight sources, transforms) and the featurize pipeline.

Names are imported lazily so that importing :mod:`cellbag.featurize` (for example via
``cellbag.featurize.adapters``) stays cheap until an encoder is needed.
"""

from cellbag.core.lazy import lazy_exports

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
    "run_featurize_config": "cellbag.featurize.pipeline",
    "FeaturizeConfig": "cellbag.featurize.config",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
