"""Cohort readers: the challenge layout and the manifest layout.

A :class:`Cohort` is a plain value: a patients table, a cells table and a list of
problems found while reading (skips a user may want to go on with).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from cellbag.core.io import name_problem, shown_name
from cellbag.data.errors import CohortError
from cellbag.data.labels import CLASS_NAMES

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
SPLITS = ("train", "test")


def check_patient_id(
    patient_id: object, where: str | os.PathLike, error: type[Exception] = CohortError
) -> str:
    """``patient_id`` if it can name a file (export, report): no path separator, no ``..``,
    no leading dot, no control character, at most 200 bytes; else ``error`` in one line
    naming ``where`` and the id. The one check at every door (CSVs, manifest, import, store)."""
    why = name_problem(patient_id)
    if why is not None:
        raise error(
            f"{os.fspath(where)}: patient {shown_name(patient_id)}: an ID must be a plain "
            f"file name, and this one {why}"
        )
    return str(patient_id)


@dataclass(frozen=True)
class Problem:
    """Something wrong that was skipped (a warning, recorded and listed by ``inspect``)."""

    kind: str
    file: str
    patient_id: str | None
    message: str

    def __str__(self) -> str:
        who = f" patient {self.patient_id}" if self.patient_id else ""
        return f"{self.kind}: {self.file}{who}: {self.message}"


@dataclass(frozen=True)
class Cohort:
    """Patients (one row each) and their cells (one row per image).

    ``patients`` columns: ``patient_id``, ``split`` (``train``/``test``), ``label``
    (nullable Int64: 1 tumoral, 0 reactive, <NA> unknown), ``gender`` (``M``/``F``/None),
    ``dob`` (datetime64, NaT if unknown), ``lymph_count`` (float, NaN if unknown).
    Rows are ordered train first, then test, patients in natural order.

    ``cells`` columns: ``cell_id`` (``<patient_id>/<file name>``), ``patient_id``,
    ``path`` (absolute). Cells are grouped by patient in the patients' order and sorted
    by file name inside a patient, so cell ids and row order are reproducible.
    """

    root: Path
    layout: str
    patients: pd.DataFrame
    cells: pd.DataFrame
    problems: tuple[Problem, ...] = field(default_factory=tuple)
    sources: tuple[str, ...] = ()  # the CSV files read (manifest, clinical/label tables)

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    def split(self, name: str) -> pd.DataFrame:
        """Patients of one split."""
        return self.patients[self.patients["split"] == name]

    def offsets(self) -> np.ndarray:
        """CSR offsets (n_patients + 1) of each patient's cells in ``cells``."""
        counts = self.cells.groupby("patient_id", sort=False).size()
        counts = counts.reindex(self.patients["patient_id"]).fillna(0).astype(np.int64)
        return np.concatenate([[0], np.cumsum(counts.to_numpy())]).astype(np.int64)

    def fingerprint(self) -> str:
        """A digest of the cohort's membership (patient ids and cell ids, in order)."""
        import hashlib

        h = hashlib.sha256()
        for pid in self.patients["patient_id"]:
            h.update(str(pid).encode() + b"\0")
        h.update(b"\1")
        for cid in self.cells["cell_id"]:
            h.update(str(cid).encode() + b"\0")
        return h.hexdigest()[:16]

    def clinical_digest(self) -> str:
        """A digest of the patients table (ids, splits, labels, clinical values)."""
        return clinical_digest(self.patients)


CLINICAL_KEYS = ("patient_id", "split", "label", "gender", "dob", "lymph_count")


def clinical_rows(patients: pd.DataFrame) -> dict[str, tuple[str, ...]]:
    """Each patient's split, label and clinical values as canonical text (for comparison)."""
    out: dict[str, tuple[str, ...]] = {}
    dob = pd.to_datetime(patients["dob"]) if "dob" in patients else None
    for i, pid in enumerate(patients["patient_id"].astype(str)):
        label = patients["label"].iloc[i]
        gender = patients["gender"].iloc[i] if "gender" in patients else None
        d = dob.iloc[i] if dob is not None else pd.NaT
        count = float(patients["lymph_count"].iloc[i]) if "lymph_count" in patients else np.nan
        out[pid] = (
            str(patients["split"].iloc[i]),
            "" if pd.isna(label) else str(int(label)),
            gender if isinstance(gender, str) else "",
            "" if pd.isna(d) else d.strftime("%Y-%m-%d"),
            "" if np.isnan(count) else repr(count),
        )
    return out


def clinical_digest(patients: pd.DataFrame) -> str:
    """A digest of a patients table: the same rows give the same digest wherever read."""
    h = hashlib.sha256()
    for pid, row in clinical_rows(patients).items():
        h.update("\x1f".join((pid, *row)).encode() + b"\x1e")
    return h.hexdigest()[:16]


def natural_key(text: str) -> tuple:
    """Sort key that puts ``P2`` before ``P10``."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text)))


def _is_dangling(p: Path) -> bool:
    return p.is_symlink() and not p.exists()


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (any case of .jpg/.jpeg/.png/.tif), hidden files ignored, sorted.

    A symbolic link whose target is missing is listed too: it is recorded as unreadable
    (naming its target) rather than dropped without a trace.
    """
    files = [
        p
        for p in folder.iterdir()
        if (p.is_file() or _is_dangling(p))
        and not p.name.startswith(".")
        and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def dangling_problems(paths: list[Path], patient_id: str) -> list[Problem]:
    """One ``unreadable-image`` problem per broken symbolic link, naming its target."""
    return [
        Problem("unreadable-image", str(p), patient_id, f"broken symbolic link to {os.readlink(p)}")
        for p in paths
        if _is_dangling(p)
    ]


# ---------------------------------------------------------------- value parsing


_MISSING = ("",)
_DATE_PATTERNS = (
    (re.compile(r"^([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})$"), "mdy"),
    (re.compile(r"^([0-9]{1,2})-([0-9]{1,2})-([0-9]{4})$"), "dmy"),
    # ISO, also with a time of day (a datetime column written out, e.g. by pandas)
    (re.compile(r"^([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})(?:[ T][0-9:.]+)?$"), "ymd"),
)
_NUMBER = re.compile(r"^[+-]?([0-9]+([.,][0-9]*)?|[.,][0-9]+)([eE][+-]?[0-9]+)?$")
_LABEL = re.compile(r"^(-1|0|1)([.]0+)?$")
_BY_NAME = {name: code for code, name in CLASS_NAMES.items()}  # a LABEL may be written so
EARLIEST_DOB = pd.Timestamp("1900-01-01")


def _blank(value: object) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    if isinstance(value, (float, np.floating, np.datetime64)):
        return bool(pd.isna(value))
    return str(value).strip() == ""


def parse_dob(value: object, *, file: str, patient_id: str) -> pd.Timestamp:
    """Parse a date of birth written ``M/D/YYYY`` or ``D-M-YYYY`` (or ISO ``YYYY-MM-DD``).

    A date in the future or before 1900 is refused: it is a typo, not an age.
    """
    if _blank(value):
        return pd.NaT
    if isinstance(value, (date, np.datetime64)):  # a datetime column (pd.Timestamp too)
        value = pd.Timestamp(value).strftime("%Y-%m-%d")
    text = str(value).strip()
    for pattern, order in _DATE_PATTERNS:
        m = pattern.match(text)
        if not m:
            continue
        a, b, c = (int(x) for x in m.groups())
        y, mo, d = {"mdy": (c, a, b), "dmy": (c, b, a), "ymd": (a, b, c)}[order]
        try:
            ts = pd.Timestamp(year=y, month=mo, day=d)
        except ValueError:
            break
        if ts.date() > date.today():
            raise CohortError(f"{file}: patient {patient_id}: DOB {text!r} is in the future")
        if ts < EARLIEST_DOB:
            raise CohortError(f"{file}: patient {patient_id}: DOB {text!r} is before 1900")
        return ts
    raise CohortError(
        f"{file}: patient {patient_id}: unparseable DOB {text!r} (expected M/D/YYYY, D-M-YYYY "
        "or YYYY-MM-DD)"
    )


def parse_gender(value: object, *, file: str, patient_id: str) -> str | None:
    """``M``/``F`` in any case (also ``male``/``female``); empty is unknown."""
    if _blank(value):
        return None
    text = str(value).strip().upper()
    mapping = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
    if text not in mapping:
        raise CohortError(
            f"{file}: patient {patient_id}: unknown GENDER {value!r} (expected M or F)"
        )
    return mapping[text]


def parse_count(value: object, *, file: str, patient_id: str) -> float:
    """A non-negative lymphocyte count (×10⁹/L, ``12.5`` or ``12,5``); empty is unknown."""
    if _blank(value):
        return float("nan")
    text = str(value).strip()
    if not _NUMBER.match(text):
        raise CohortError(f"{file}: patient {patient_id}: non-numeric LYMPH_COUNT {value!r}")
    x = float(text.replace(",", "."))
    if not np.isfinite(x) or x < 0:
        raise CohortError(f"{file}: patient {patient_id}: invalid LYMPH_COUNT {value!r}")
    return x


def parse_label(value: object, *, file: str, patient_id: str) -> object:
    """Exactly ``0`` / ``reactive`` or ``1`` / ``tumoral``; ``-1`` or empty is unknown."""
    if _blank(value):
        return pd.NA
    text = str(value).strip()
    if text.lower() in _BY_NAME:
        return _BY_NAME[text.lower()]
    if not _LABEL.match(text):
        raise CohortError(
            f"{file}: patient {patient_id}: invalid LABEL {value!r} (expected 0/reactive, "
            "1/tumoral, or -1/empty for unknown)"
        )
    x = int(float(text))
    return pd.NA if x == -1 else x


def _norm_columns(df: pd.DataFrame) -> pd.DataFrame:
    rename = {}
    for c in df.columns:
        key = str(c).strip().lower()
        key = {"id": "patient_id", "patient": "patient_id"}.get(key, key)
        rename[c] = key
    return df.rename(columns=rename)


def _clinical_rows(df: pd.DataFrame, file: Path, split: str) -> list[dict]:
    df = _norm_columns(df)
    if "patient_id" not in df.columns:
        raise CohortError(f"{file}: no ID/patient_id column")
    ids = df["patient_id"].astype(str).str.strip()
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise CohortError(f"{file}: patient {dup[0]}: duplicated ID")
    rows = []
    for (_, r), pid in zip(df.iterrows(), ids, strict=True):
        check_patient_id(pid, file)
        kw = {"file": str(file), "patient_id": pid}
        rows.append(
            {
                "patient_id": pid,
                "split": split,
                "label": parse_label(r.get("label"), **kw) if "label" in df.columns else pd.NA,
                "gender": parse_gender(r.get("gender"), **kw) if "gender" in df.columns else None,
                "dob": parse_dob(r.get("dob"), **kw) if "dob" in df.columns else pd.NaT,
                "lymph_count": parse_count(r.get("lymph_count"), **kw)
                if "lymph_count" in df.columns
                else float("nan"),
            }
        )
    return rows


def _decode_text(path: Path) -> str:
    """The file's text: UTF-8 (a leading BOM is skipped), else a one-line error."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CohortError(f"{path}: cannot read ({e.strerror or e})") from None
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = start + e.start
        line = raw[:at].count(b"\n") + 1
        raise CohortError(
            f"{path}: not UTF-8 text: byte 0x{raw[at]:02x} at offset {at} (line {line}); "
            "save the file as UTF-8"
        ) from None


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV as a table of stripped strings; every row must have the header's field count."""
    text = _decode_text(path)
    rows: list[list[str]] = []
    header: list[str] | None = None
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue  # blank line
            if header is None:
                header = [f.strip() for f in fields]
                continue
            if len(fields) != len(header):
                who = fields[0].strip() or "?"
                raise CohortError(
                    f"{path}: line {reader.line_num} (patient {who}): {len(fields)} fields but "
                    f'the header has {len(header)}; quote a value holding a comma ("12,5") '
                    "or write 12.5"
                )
            rows.append([f.strip() for f in fields])
    except csv.Error as e:
        raise CohortError(f"{path}: line {reader.line_num}: cannot parse CSV ({e})") from None
    if header is None:
        raise CohortError(f"{path}: empty CSV")
    names = [h.lower() for h in header]
    dup = [h for h in header if names.count(h.lower()) > 1]
    if dup:
        raise CohortError(f"{path}: column {dup[0]!r} appears twice in the header")
    return pd.DataFrame(rows, columns=header, dtype=object)


def _finish(
    root: Path,
    layout: str,
    rows: list[dict],
    cells: list[dict],
    problems: list[Problem],
    sources: list[Path],
) -> Cohort:
    patients = pd.DataFrame(
        rows, columns=["patient_id", "split", "label", "gender", "dob", "lymph_count"]
    )
    if len(patients):
        order = sorted(
            range(len(patients)),
            key=lambda i: (
                SPLITS.index(patients.at[i, "split"]),
                natural_key(patients.at[i, "patient_id"]),
            ),
        )
        patients = patients.iloc[order].reset_index(drop=True)
    patients["label"] = patients["label"].astype("Int64")
    patients["dob"] = pd.to_datetime(patients["dob"])
    patients["lymph_count"] = patients["lymph_count"].astype(float)
    patients["gender"] = patients["gender"].astype(object)
    cell_df = pd.DataFrame(cells, columns=["cell_id", "patient_id", "path"])
    rank = {pid: i for i, pid in enumerate(patients["patient_id"])}
    cell_df = cell_df[cell_df["patient_id"].isin(rank)]
    if len(cell_df):
        cell_df = (
            cell_df.assign(_r=cell_df["patient_id"].map(rank))
            .sort_values("_r", kind="stable")
            .drop(columns="_r")
            .reset_index(drop=True)
        )
    dup = cell_df["cell_id"][cell_df["cell_id"].duplicated()]
    if len(dup):
        raise CohortError(f"{root}: duplicated cell id {dup.iloc[0]!r}")
    for p in problems:
        warnings.warn(str(p), stacklevel=3)
    return Cohort(
        root=root,
        layout=layout,
        patients=patients,
        cells=cell_df,
        problems=tuple(problems),
        sources=tuple(str(p) for p in sources),
    )


# ---------------------------------------------------------------- challenge layout


def read_challenge(root: str | Path) -> Cohort:
    """Read ``ROOT/trainset/trainset_true.csv`` + ``ROOT/trainset/<ID>/*`` and the test split."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise CohortError(f"{root}: no such folder")
    rows: list[dict] = []
    cells: list[dict] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    sources: list[Path] = []
    for split, folder_name, csv_name in (
        ("train", "trainset", "trainset_true.csv"),
        ("test", "testset", "testset_data.csv"),
    ):
        folder = root / folder_name
        csv = folder / csv_name
        if split == "train" and not csv.is_file():
            raise CohortError(f"{csv}: missing training CSV")
        if split == "test" and not folder.exists():
            continue  # a cohort may have no test split
        if split == "test" and not csv.is_file():
            subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if subdirs:
                raise CohortError(f"{csv}: missing test CSV ({len(subdirs)} patient folders found)")
            continue
        df = _read_csv(csv)
        sources.append(csv)
        split_rows = _clinical_rows(df, csv, split)
        if split == "test":
            for r in split_rows:
                r["label"] = pd.NA  # test labels are never read
        kept = []
        for r in split_rows:
            pid = r["patient_id"]
            if pid in seen:
                raise CohortError(f"{csv}: patient {pid}: duplicated ID (also in {seen[pid]})")
            seen[pid] = str(csv)
            pdir = folder / pid
            try:
                is_dir = pdir.is_dir()
            except OSError as e:
                raise CohortError(f"{csv}: patient {pid[:40]!r}: {e.strerror}") from None
            if not is_dir:
                problems.append(
                    Problem(
                        "no-folder", str(pdir), pid, "patient in CSV has no image folder; skipped"
                    )
                )
                continue
            imgs = list_images(pdir)
            if not imgs:
                problems.append(Problem("empty-folder", str(pdir), pid, "no images; skipped"))
                continue
            kept.append(r)
            problems.extend(dangling_problems(imgs, pid))
            cells.extend(
                {"cell_id": f"{pid}/{p.name}", "patient_id": pid, "path": str(p)} for p in imgs
            )
        rows.extend(kept)
        listed = {r["patient_id"] for r in split_rows}
        for d in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            if d.is_dir() and not d.name.startswith(".") and d.name not in listed:
                problems.append(
                    Problem(
                        "no-csv-row", str(d), d.name, f"folder has no row in {csv.name}; skipped"
                    )
                )
    return _finish(root, "challenge", rows, cells, problems, sources)


# ---------------------------------------------------------------- manifest layout


def read_manifest(manifest: str | Path, clinical: str | Path | None = None) -> Cohort:
    """Read a CSV ``patient_id,image_path[,split]`` (paths relative to the CSV) + clinical CSV.

    The clinical CSV (default: ``clinical.csv`` beside the manifest, if present) is keyed by
    ``patient_id`` and may hold ``label``, ``gender``, ``dob``, ``lymph_count``.
    Patients without a split are ``train``.
    """
    manifest = Path(manifest).resolve()
    if not manifest.is_file():
        raise CohortError(f"{manifest}: missing manifest CSV")
    df = _norm_columns(_read_csv(manifest))
    for col in ("patient_id", "image_path"):
        if col not in df.columns:
            raise CohortError(f"{manifest}: missing column {col!r}")
    base = manifest.parent
    if clinical is None and (base / "clinical.csv").is_file():
        clinical = base / "clinical.csv"
    clin_rows: dict[str, dict] = {}
    if clinical is not None:
        clinical = Path(clinical).resolve()
        if not clinical.is_file():
            raise CohortError(f"{clinical}: missing clinical CSV")
        for r in _clinical_rows(_read_csv(clinical), clinical, "train"):
            clin_rows[r["patient_id"]] = r
    problems: list[Problem] = []
    cells: list[dict] = []
    splits: dict[str, str] = {}
    for _, r in df.iterrows():
        pid = check_patient_id(str(r["patient_id"]).strip(), manifest)
        split = str(r.get("split", "") or "train").strip().lower() or "train"
        if split not in SPLITS:
            raise CohortError(f"{manifest}: patient {pid}: unknown split {split!r} (train or test)")
        if splits.setdefault(pid, split) != split:
            raise CohortError(f"{manifest}: patient {pid}: cells in both train and test")
        path = Path(str(r["image_path"]).strip())
        path = path if path.is_absolute() else (base / path)
        try:
            path.is_symlink(), path.is_file()  # probe: can the name be looked up at all?
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            problems.append(Problem("missing-image", str(path)[:200], pid, f"{why}; skipped"))
            continue
        if _is_dangling(path):
            problems.extend(dangling_problems([path], pid))
            cells.append(
                {"cell_id": f"{pid}/{path.name}", "patient_id": pid, "path": str(path.absolute())}
            )
            continue
        if not path.is_file():
            problems.append(
                Problem(
                    "missing-image", str(path), pid, "image listed in manifest not found; skipped"
                )
            )
            continue
        cells.append(
            {"cell_id": f"{pid}/{path.name}", "patient_id": pid, "path": str(path.resolve())}
        )
    cell_df = pd.DataFrame(cells, columns=["cell_id", "patient_id", "path"])
    if len(cell_df):
        cell_df = cell_df.assign(_k=cell_df["path"].map(lambda s: natural_key(Path(s).name)))
        cell_df = cell_df.sort_values(["patient_id", "_k"], kind="stable").drop(columns="_k")
        # the same file name under two folders of one patient: make ids unique by relative path
        dup = cell_df["cell_id"].duplicated(keep=False)
        if dup.any():
            cell_df.loc[dup, "cell_id"] = [
                f"{p}/{Path(s).relative_to(base) if Path(s).is_relative_to(base) else Path(s)}"
                for p, s in zip(
                    cell_df.loc[dup, "patient_id"], cell_df.loc[dup, "path"], strict=True
                )
            ]
    rows = []
    with_cells = set(cell_df["patient_id"])
    for pid, split in splits.items():
        if pid not in with_cells:
            problems.append(
                Problem("empty-folder", str(manifest), pid, "no readable image listed; skipped")
            )
            continue
        base_row = clin_rows.get(pid)
        if base_row is None:
            if clin_rows:
                problems.append(
                    Problem(
                        "no-clinical-row", str(clinical), pid, "no clinical row; values unknown"
                    )
                )
            base_row = {
                "patient_id": pid,
                "label": pd.NA,
                "gender": None,
                "dob": pd.NaT,
                "lymph_count": float("nan"),
            }
        row = dict(base_row, split=split)
        if split == "test":
            row["label"] = pd.NA
        rows.append(row)
    for pid in clin_rows:
        if pid not in splits:
            problems.append(
                Problem(
                    "no-images",
                    str(clinical),
                    pid,
                    "clinical row has no images in manifest; skipped",
                )
            )
    sources = [manifest] + ([clinical] if clinical is not None else [])
    return _finish(manifest.parent, "manifest", rows, cell_df.to_dict("records"), problems, sources)


def read_cohort(path: str | Path, clinical: str | Path | None = None) -> Cohort:
    """Read a cohort from a challenge-layout folder or a manifest CSV (detected)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_manifest(path, clinical)
    if path.is_dir():
        if (path / "trainset").is_dir():
            return read_challenge(path)
        if (path / "manifest.csv").is_file():
            return read_manifest(path / "manifest.csv", clinical)
        raise CohortError(f"{path}: neither a challenge layout (trainset/) nor a manifest.csv")
    raise CohortError(f"{path}: no such file or folder")
