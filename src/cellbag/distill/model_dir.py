"""The deployable student: a folder with ``weights.safetensors`` and ``config.json``.

``config.json`` holds the encoder (timm name, starting weights, image size,
normalisation, adapter), the head, the clinical scaler, the decision threshold and the
teacher's id and metrics. Loading needs neither the network nor the teacher: the
architecture is rebuilt with random weights (``none``) and the saved weights loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cellbag.core.device import resolve_device
from cellbag.core.io import save_safetensors, write_json
from cellbag.distill.errors import DistillError
from cellbag.distill.student import StudentModel, StudentSpec, build_student

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "cellbag-student"
FORMAT_VERSION = 2  # 2: the head is built from cellbag.core.mil (1 is read and upgraded)


def deployable_state(model: StudentModel) -> dict[str, torch.Tensor]:
    """Encoder + head tensors (the embedding-loss projection is left out)."""
    return {
        k: v.detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("projection.")
    }


def save_model_dir(model: StudentModel, out: str | Path, config: dict[str, Any]) -> Path:
    """Write ``weights.safetensors`` then ``config.json`` into ``out`` (each atomically,
    the config last, so a crash never leaves a loadable half model)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DistillError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(deployable_state(model), out / WEIGHTS_FILE, format=FORMAT)
    write_json(out / CONFIG_FILE, config)
    return out


@dataclass
class DeployedStudent:
    """A loaded student: the model (eval mode), its config, and the clinical scaler."""

    model: StudentModel
    config: dict[str, Any]
    scaler: Any
    folder: Path
    device: torch.device

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", 0.5))

    @property
    def image_size(self) -> int:
        return int(self.config["encoder"]["image_size"])

    @property
    def interpolation(self) -> str:
        return str(self.config["encoder"].get("interpolation", "bicubic"))

    def clinical(self, patients: pd.DataFrame) -> np.ndarray:
        """Scaled clinical features (n, c) of ``patients`` ((n, 0) without clinical fusion)."""
        if self.scaler is None:
            return np.zeros((len(patients), 0), np.float32)
        return self.scaler.transform(patients)

    @torch.inference_mode()
    def embed(self, pixels: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """Cell embeddings (n, dim) of uint8 pixels (n, S, S, 3)."""
        return self.model.embed_cells(torch.from_numpy(pixels).to(self.device), chunk=batch_size)

    @torch.inference_mode()
    def predict_bags(
        self, bags: list[np.ndarray | torch.Tensor], clinical: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Probabilities (n,) and per-cell attention of bags of cell embeddings."""
        probs, weights = [], []
        clin = torch.as_tensor(clinical, dtype=torch.float32, device=self.device)
        for i, b in enumerate(bags):
            x = torch.as_tensor(b, dtype=torch.float32, device=self.device)
            logits, att, _ = self.model.forward_bags([x], clin[i : i + 1])
            probs.append(float(torch.sigmoid(logits.double())[0]))
            weights.append(att[0].double().cpu().numpy())
        return np.asarray(probs, np.float64), weights


def read_config(folder: str | Path) -> dict[str, Any]:
    """A model folder's ``config.json``, checked."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise DistillError(f"{folder}: student model folder not found")
    for f in (cfg_path, folder / WEIGHTS_FILE):
        if not f.is_file():
            raise DistillError(
                f"{f}: missing (a student model folder holds {WEIGHTS_FILE} + {CONFIG_FILE})"
            )
    try:
        doc = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DistillError(f"{cfg_path}: unreadable model config ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DistillError(f"{cfg_path}: not a cellbag student model (made by `cellbag distill`)")
    if int(doc.get("version", 0)) > FORMAT_VERSION:
        raise DistillError(
            f"{cfg_path}: model format version {doc['version']} is newer than this cellbag"
        )
    return doc


def load_student(folder: str | Path, device: str = "cpu") -> DeployedStudent:
    """Rebuild a student from its folder, offline (random init, then the saved weights)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cellbag.data import ClinicalScaler

    folder = Path(folder)
    doc = read_config(folder)
    dev = resolve_device(device, error=DistillError).device
    try:
        spec = StudentSpec.from_dict(doc["student"])
    except (KeyError, TypeError) as e:
        raise DistillError(f"{folder / CONFIG_FILE}: bad student spec ({e})") from None
    adapter = spec.adapter
    bare = replace(spec, adapter=None, teacher_dim=None)
    model, _ = build_student(bare, adapter=None, device=str(dev), weights="none")
    if adapter:
        from cellbag.featurize.adapters import AdapterError, add_adapter

        try:
            add_adapter(model.encoder, adapter["kind"], **adapter.get("config", {}))
        except (AdapterError, TypeError) as e:
            raise DistillError(f"{folder / CONFIG_FILE}: cannot rebuild adapter ({e})") from None
        model.spec = replace(model.spec, adapter=adapter)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise DistillError(f"{folder / WEIGHTS_FILE}: unreadable weights ({e})") from None
    from cellbag.distill.student import upgrade_head_state
    from cellbag.featurize.statedict import state_dict_mismatch

    if int(doc.get("version", 1)) < 2:
        state = upgrade_head_state(state, spec.head.hidden)
    problem = state_dict_mismatch(state, model.state_dict())
    if problem:
        raise DistillError(f"{folder / WEIGHTS_FILE}: weights do not fit {spec.encoder}: {problem}")
    model.load_state_dict(state, strict=False)
    model.eval()
    scaler_doc = (doc.get("clinical") or {}).get("scaler")
    scaler = ClinicalScaler.from_dict(scaler_doc) if scaler_doc else None
    return DeployedStudent(model=model, config=doc, scaler=scaler, folder=folder, device=dev)


def export_encoder(folder: str | Path, out: str | Path) -> tuple[Path, Path | None]:
    """Write the student's encoder as files the featurizer loads: a plain timm state dict
    (``encoder.safetensors``) and, if it has one, its adapter folder (``adapter/``).

    ``cellbag featurize DATA STORE --encoder NAME --weights OUT/encoder.safetensors
    [--adapter OUT/adapter] --image-size S`` then gives the student's cell embeddings.
    """
    from cellbag.featurize.adapters import base_state_dict, save_adapter

    student = load_student(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    enc = student.model.encoder
    weights = out / "encoder.safetensors"
    save_safetensors(base_state_dict(enc), weights)
    adapter = None
    if student.config["encoder"].get("adapter"):
        adapter = save_adapter(
            enc,
            out / "adapter",
            base_weights={"source": str(weights), "sha256": None},
        )
    return weights, adapter
