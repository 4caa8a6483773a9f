"""Leak guards: an encoder fine-tuned on patients' labels is never scored on those patients.

``cellbag finetune`` records the patients whose labels trained the encoder in the
adapter's metadata (``label_patients``); featurizing with that adapter carries the
record into the store's encoder metadata (``encoder_info["adapter"]``), where ``cv`` and
``fit`` read it. Fine-tuning inside each outer fold (a ``cv --nested-finetune``) is not
offered: each outer fold would need its own fine-tuning and a featurize of the whole cohort
(one ViT-S/16 pass over 20,000 cells alone takes 1,027 s on the 2-core development CPU,
README figures); hold the fine-tuning patients out instead.
A full fine-tune (``--adapter none``) records them in its weights file's metadata
(``cellbag_label_patients``), which featurize carries into the store the same way.

Self-supervision reads no label, but the patients whose images pretrained an encoder
(``cellbag pretrain-mae`` records them in ``encoder.safetensors``; featurize carries them
into ``encoder_info["image_patients"]``) are no longer new to it: ``cv`` scores them, and
marks its figures as transductive (:func:`transductive`: each head's ``config.json``, a
warning line, the report's first screen) instead of refusing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cellbag.evaluate.errors import LabelLeakError

__all__ = ["LabelLeakError", "guard", "image_patients", "label_patients", "transductive"]


def label_patients(encoder_info: Mapping[str, Any] | None) -> set[str]:
    """Patients whose labels trained the encoder, from a store's encoder metadata."""
    if not encoder_info:
        return set()
    out: set[str] = set()
    for where in (encoder_info, encoder_info.get("adapter") or {}):
        ids = where.get("label_patients") if isinstance(where, Mapping) else None
        if isinstance(ids, list | tuple):
            out |= {str(p) for p in ids}
    return out


def image_patients(encoder_info: Mapping[str, Any] | None) -> set[str]:
    """Patients whose images (not labels) trained the encoder, from a store's encoder
    metadata: self-supervision on their cells."""
    ids = (encoder_info or {}).get("image_patients")
    return {str(p) for p in ids} if isinstance(ids, list | tuple) else set()


def transductive(
    patient_ids: list[str], encoder_info: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """What a run's figures must say when the encoder was self-supervised on the images of
    some of the patients it scores (None when it saw none of them): how many, one of them,
    and a sentence for a reader."""
    seen = image_patients(encoder_info)
    hit = [p for p in patient_ids if p in seen]
    if not hit:
        return None
    return {
        "image_patients": len(hit),
        "of": len(patient_ids),
        "example": hit[0],
        "note": (
            f"transductive: the encoder was pretrained on the images of {len(hit)} of these "
            f"{len(patient_ids)} patients (their pixels, never their labels), so they are "
            "not new patients to it; figures on patients it never saw may be lower"
        ),
    }


def guard(data: Any, encoder_info: Mapping[str, Any] | None, holdout: bool, what: str) -> Any:
    """``data`` when no patient of it trained the encoder; with ``holdout``, ``data`` without
    those patients; otherwise a one-line :class:`LabelLeakError` saying how many and what to do."""
    seen = label_patients(encoder_info)
    hit = [i for i, p in enumerate(data.patient_ids) if p in seen]
    if not hit:
        return data
    if not holdout:
        raise LabelLeakError(
            f"encoder {data.encoder_id} was fine-tuned on the labels of {len(hit)} of these "
            f"{len(data.patient_ids)} training patients (e.g. {data.patient_ids[hit[0]]}); "
            f"`{what}` would score it on them. Pass --holdout-finetuned to leave them out, or "
            "fine-tune on other patients"
        )
    keep = np.setdiff1d(np.arange(len(data.patient_ids)), hit)
    if len(keep) == 0:
        raise LabelLeakError(
            f"encoder {data.encoder_id} was fine-tuned on the labels of every training "
            f"patient: nothing is left to score with `{what}`; fine-tune on fewer patients"
        )
    sub = data.subset(keep)
    sub.digest = f"{data.digest}-holdout{len(hit)}"
    sub.skipped = list(data.skipped)
    return sub
