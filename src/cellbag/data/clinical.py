"""Clinical features, computed reproducibly and scaled on training patients only."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

DEFAULT_REFERENCE_DATE = "2020-01-01"
FEATURE_NAMES = ("age", "age_missing", "gender_M", "gender_F", "log_lymph_count", "lymph_missing")


#: the raw clinical columns of a patients table (features derive from them)
CLINICAL_COLUMNS = ("gender", "dob", "lymph_count")

#: columns of a patients table that are not further clinical features
NON_FEATURE_COLUMNS = ("patient_id", "split", "label", "gender", "dob", "lymph_count", "n_cells")


def extra_clinical_columns(patients: pd.DataFrame) -> list[str]:
    """Numeric columns beyond gender/dob/lymph_count/age (e.g. an imported store's own
    clinical columns): each becomes one more feature, imputed and scaled like age."""
    return [
        str(c)
        for c in patients.columns
        if c not in NON_FEATURE_COLUMNS
        and c not in FEATURE_NAMES
        and pd.api.types.is_numeric_dtype(patients[c])
    ]


def has_clinical_values(patients: pd.DataFrame) -> bool:
    """Whether any patient has any clinical value (gender, dob, lymph_count or an extra
    numeric column); without one, a clinical branch would only see imputed constants."""
    cols = [c for c in CLINICAL_COLUMNS if c in patients]
    cols += extra_clinical_columns(patients)
    return bool(cols) and bool(patients[cols].notna().to_numpy().any())


def dob_after(patients: pd.DataFrame, reference_date: str = DEFAULT_REFERENCE_DATE) -> list[str]:
    """One line per patient born after the reference date (an age below zero: a typo in
    the DOB, or a reference date set too early)."""
    if "dob" not in patients:
        return []
    dob = pd.to_datetime(patients["dob"])
    late = dob.notna() & (dob > pd.Timestamp(reference_date))
    return [
        f"patient {pid}: DOB {d:%Y-%m-%d} is after the reference date {reference_date} "
        "(a negative age); correct the DOB or set a later reference date"
        for pid, d in zip(patients.loc[late, "patient_id"], dob[late], strict=True)
    ]


def raw_clinical(
    patients: pd.DataFrame, reference_date: str = DEFAULT_REFERENCE_DATE
) -> pd.DataFrame:
    """Unscaled features per patient: age (years at ``reference_date``), gender one-hot,
    log1p lymphocyte count, and missing-value indicators. Index: ``patient_id``."""
    ref = pd.Timestamp(reference_date)
    dob = (
        pd.to_datetime(patients["dob"])
        if "dob" in patients
        else pd.Series(pd.NaT, index=patients.index)
    )
    late = dob_after(patients, reference_date)
    if late:
        from cellbag.data.errors import CohortError

        raise CohortError(late[0])
    age = (ref - dob).dt.days / 365.25
    if "age" in patients:  # an age column (in years) stands in where the date of birth is unknown
        age = age.fillna(pd.to_numeric(patients["age"], errors="coerce"))
    gender = patients["gender"] if "gender" in patients else pd.Series(None, index=patients.index)
    count = (
        patients["lymph_count"].astype(float)
        if "lymph_count" in patients
        else pd.Series(np.nan, index=patients.index)
    )
    out = pd.DataFrame(
        {
            "age": age.astype(float),
            "age_missing": age.isna().astype(float),
            "gender_M": (gender == "M").astype(float),
            "gender_F": (gender == "F").astype(float),
            "log_lymph_count": np.log1p(count),
            "lymph_missing": count.isna().astype(float),
        }
    )
    for col in extra_clinical_columns(patients):
        out[col] = patients[col].astype(float).to_numpy()
    out.index = patients["patient_id"].astype(str).to_numpy()
    out.index.name = "patient_id"
    return out


def check_clinical(
    patients: pd.DataFrame | None, reference_date: str = DEFAULT_REFERENCE_DATE
) -> None:
    """Raise the one-line ``CohortError`` (naming the patient) if the clinical features of
    ``patients`` cannot be computed and scaled: run before the first fit of any head, so a
    run stops before it writes anything rather than half-way. ``None`` (clinical values
    given as a plain matrix) has nothing to check."""
    if patients is not None:
        ClinicalScaler(reference_date).fit_transform(patients)


class ClinicalScaler(TransformerMixin, BaseEstimator):
    """A scikit-learn transformer from a patients table to scaled clinical features: fit
    on training patients, transform any patients (``clone``, ``get_params`` and pipelines
    work; ``transform`` before ``fit`` raises ``NotFittedError``).

    Continuous features (age, log count, extra numeric columns) are imputed with the
    training median and standardised with the training mean/std; indicators pass through.
    Learned: ``median_``, ``mean_``, ``std_`` (column -> value), ``extra_`` (the extra
    columns) and ``feature_names_`` (the output columns, also ``get_feature_names_out()``).
    """

    def __init__(self, reference_date: str = DEFAULT_REFERENCE_DATE) -> None:
        self.reference_date = reference_date

    def fit(self, patients: pd.DataFrame, y: object = None) -> ClinicalScaler:
        """Learn the imputation and scaling of ``patients`` (``y`` is ignored)."""
        return self.fit_raw(
            raw_clinical(patients, self.reference_date), extra_clinical_columns(patients)
        )

    def fit_raw(self, raw: pd.DataFrame, extra: list[str]) -> ClinicalScaler:
        """``fit`` on rows of :func:`raw_clinical` computed beforehand (a cross-validation
        computes them once for all its folds: the dates are what takes time), ``extra``
        the extra numeric columns (:func:`extra_clinical_columns`)."""
        median, mean, std = {}, {}, {}
        for col in ("age", "log_lymph_count", *extra):
            v = raw[col]
            med = float(v.median()) if v.notna().any() else 0.0
            filled = v.fillna(med)
            median[col] = med
            mean[col] = float(filled.mean()) if len(filled) else 0.0
            sd = float(filled.std(ddof=0)) if len(filled) else 1.0
            std[col] = sd if sd > 1e-8 else 1.0
        self._set_state(median, mean, std, extra)
        return self

    def _set_state(self, median: dict, mean: dict, std: dict, extra: list[str]) -> None:
        self.median_, self.mean_, self.std_ = dict(median), dict(mean), dict(std)
        self.extra_ = list(extra)
        self.feature_names_ = [*FEATURE_NAMES, *self.extra_]

    def transform(self, patients: pd.DataFrame) -> np.ndarray:
        """Scaled features (n_patients, n_features) float32, columns ``feature_names_``."""
        check_is_fitted(self, ("median_", "mean_", "std_", "extra_"))
        return self.transform_raw(raw_clinical(patients, self.reference_date))

    def transform_raw(self, raw: pd.DataFrame) -> np.ndarray:
        """``transform`` of rows of :func:`raw_clinical` (left unchanged)."""
        check_is_fitted(self, ("median_", "mean_", "std_", "extra_"))
        raw = raw.copy()
        missing = [c for c in self.extra_ if c not in raw]
        if missing:
            from cellbag.data.errors import CohortError

            raise CohortError(f"clinical column {missing[0]!r} is missing from the patients table")
        for col in ("age", "log_lymph_count", *self.extra_):
            raw[col] = (raw[col].fillna(self.median_[col]) - self.mean_[col]) / self.std_[col]
        return raw[self.feature_names_].to_numpy(dtype=np.float32)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        """The output columns (``input_features`` is ignored: the input is a patients table)."""
        check_is_fitted(self, "feature_names_")
        return np.asarray(self.feature_names_, dtype=object)

    def to_dict(self) -> dict:
        """The fitted state as JSON-able data (``clinical.json`` of a model folder)."""
        check_is_fitted(self, ("median_", "mean_", "std_", "extra_"))
        return {
            "reference_date": self.reference_date,
            "median": self.median_,
            "mean": self.mean_,
            "std": self.std_,
            "extra": list(self.extra_),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClinicalScaler:
        """A fitted scaler from :meth:`to_dict`'s data (``extra`` may be absent: older
        folders)."""
        s = cls(reference_date=d["reference_date"])
        s._set_state(d["median"], d["mean"], d["std"], d.get("extra", []))
        return s
