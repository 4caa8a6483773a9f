"""Distillation: a small end-to-end student (encoder + attention-MIL head + clinical
fusion) taught by a cached-feature teacher, saved as a deployable model folder.

Names are imported lazily, so importing :mod:`cellbag.distill` does not import torch.
"""

from cellbag.core.lazy import lazy_exports

_EXPORTS = {
    "DistillError": "cellbag.distill.errors",
    "LossWeights": "cellbag.distill.losses",
    "label_loss": "cellbag.distill.losses",
    "kd_loss": "cellbag.distill.losses",
    "attention_loss": "cellbag.distill.losses",
    "embedding_loss": "cellbag.distill.losses",
    "distillation_loss": "cellbag.distill.losses",
    "BagSampler": "cellbag.distill.sampler",
    "HeadConfig": "cellbag.distill.student",
    "StudentModel": "cellbag.distill.student",
    "StudentSpec": "cellbag.distill.student",
    "build_student": "cellbag.distill.student",
    "Teacher": "cellbag.distill.teacher",
    "read_teacher": "cellbag.distill.teacher",
    "DistillConfig": "cellbag.distill.train",
    "DistillResult": "cellbag.distill.train",
    "distill": "cellbag.distill.train",
    "prepare_training_set": "cellbag.distill.train",
    "DeployedStudent": "cellbag.distill.model_dir",
    "load_student": "cellbag.distill.model_dir",
    "export_encoder": "cellbag.distill.model_dir",
    "predict_images": "cellbag.distill.predict",
    "write_predictions": "cellbag.distill.predict",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
