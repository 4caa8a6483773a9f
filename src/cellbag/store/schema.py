"""What every group, column and code of a store means, written into the store itself.

``cells/`` and ``patients/`` carry a ``columns`` attribute (name → description) and
``codes`` (column → {code: meaning}); the root carries ``schema`` (the layout in a few
lines), so a ``zarr`` or pandas user can read a store without the README::

    import zarr
    g = zarr.open_group("store.zarr", mode="r")
    g["cells"].attrs["columns"]["status"]  # 'per-cell status code, see codes.status'
"""

from __future__ import annotations

from typing import Any

from cellbag.data.labels import CLASS_NAMES

SCHEMA_VERSION = 1

CELLS_COLUMNS = {
    "cell_id": "str: unique cell id, '<patient_id>/<file name>' (images) or "
    "'<patient_id>/<row>' (imported features)",
    "patient_id": "str: the patient the cell belongs to; cells are sorted by patient",
    "path": "str: the cell image's path when the store was made ('' for imported features)",
    "status": "uint8: per-cell status code, see codes.status",
    "reason": "str: why a cell is unreadable ('' when ok)",
    "sha256": "str: sha256 of the image file ('' if not read yet or imported)",
    "size": "int64: the image file's size in bytes when last read (see codes.size)",
    "mtime_ns": "int64: the image file's modification time (ns) when last read, "
    "-2 never read, -1 missing",
    "coords": "optional (n_cells, 2): positions read from imported files "
    "(e.g. patch x, y); absent when unknown",
}
CELLS_CODES = {
    "status": {"0": "ok", "1": "unreadable (embedding row is NaN, skipped in bags)"},
    "size": {"-2": "never read (or imported features: no image)", "-1": "file missing"},
}

PATIENTS_COLUMNS = {
    "patient_id": "str: patient id (row i of every patients/ array is the same patient)",
    "split": "str: 'train' or 'test'",
    "label": "int8: see codes.label",
    "gender": "str: 'M', 'F' or '' (unknown)",
    "dob": "str: date of birth, ISO 'YYYY-MM-DD', '' if unknown",
    "lymph_count": "float64: lymphocyte count (x10^9/L), NaN if unknown",
    "n_cells": "int64: cells of the patient (ok or not)",
    "offsets": "int64 (n_patients + 1): patient i's cells are rows offsets[i]:offsets[i+1] "
    "of cells/ and of every embeddings/<encoder_id>/data",
    "clinical_extra": "optional float64 (n_patients, k): further clinical features (imported); "
    "attribute 'columns' names them; NaN if unknown",
}
PATIENTS_CODES = {
    "label": {**{str(c): n for c, n in CLASS_NAMES.items()}, "-1": "unknown (test patient)"}
}

EMBEDDINGS = {
    "data": "float16 (n_cells, dim): one row per cell, in the order of cells/; "
    "NaN for unreadable cells; chunks of chunk_rows rows, zstd + crc32c",
    "status": "uint8 (n_cells,): what this encoder did with each cell: 0 embedded, "
    "1 unreadable (row NaN, left out of bags), 255 not yet",
    "done": "uint8 (n_blocks,): 1 once a block of block_rows rows is written (resume marks)",
    "attrs": "encoder metadata: name, model, weights (+ sha256), image size, normalisation, "
    "dim, dtype, completed (null while unfinished)",
}

ROOT = (
    "cellbag feature store (Zarr v3). cells/: one row per cell, sorted by patient. "
    "patients/: one row per patient; offsets are CSR offsets into the cell rows. "
    "embeddings/<encoder_id>/data: (n_cells, dim) float16; the encoder id changes whenever "
    "the numbers would. A bag is data[offsets[i]:offsets[i+1]] minus rows whose "
    "embeddings/<encoder_id>/status is not 0. Descriptions of every column and code are in the 'columns' and "
    "'codes' attributes of cells/ and patients/."
)


def schema() -> dict[str, Any]:
    """The root ``schema`` attribute: a summary and every group's columns and codes."""
    return {
        "version": SCHEMA_VERSION,
        "summary": ROOT,
        "cells": {"columns": CELLS_COLUMNS, "codes": CELLS_CODES},
        "patients": {"columns": PATIENTS_COLUMNS, "codes": PATIENTS_CODES},
        "embeddings/<encoder_id>": EMBEDDINGS,
    }


def write_schema(root: Any) -> None:
    """Write the descriptions onto a store's root Zarr group and its cells/, patients/."""
    root["cells"].attrs.update(
        {"description": "one row per cell", "columns": CELLS_COLUMNS, "codes": CELLS_CODES}
    )
    root["patients"].attrs.update(
        {
            "description": "one row per patient",
            "columns": PATIENTS_COLUMNS,
            "codes": PATIENTS_CODES,
        }
    )
    root.attrs["schema"] = schema()
