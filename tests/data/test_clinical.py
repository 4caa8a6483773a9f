"""Clinical features: fixed reference date, one-hot gender, log count, train-only scaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellbag.data import ClinicalScaler, raw_clinical


def _patients() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": ["A", "B", "C", "D"],
            "gender": ["M", "F", None, "M"],
            "dob": pd.to_datetime(["1950-01-01", "1980-01-01", None, "1990-01-01"]),
            "lymph_count": [9.0, np.nan, 3.0, 100.0],
        }
    )


def test_raw_features_use_reference_date_not_today() -> None:
    raw = raw_clinical(_patients(), reference_date="2020-01-01")
    assert raw.loc["A", "age"] == pytest.approx(70.0, abs=0.01)
    assert raw_clinical(_patients(), reference_date="2030-01-01").loc["A", "age"] == pytest.approx(
        80.0, abs=0.01
    )
    assert raw.loc["C", "age_missing"] == 1.0 and raw.loc["A", "age_missing"] == 0.0
    assert raw[["gender_M", "gender_F"]].to_numpy().tolist() == [[1, 0], [0, 1], [0, 0], [1, 0]]
    assert raw.loc["A", "log_lymph_count"] == pytest.approx(np.log1p(9.0))


def test_scaler_is_fitted_on_training_patients_only() -> None:
    p = _patients()
    train, test = p.iloc[:3], p.iloc[3:]
    s = ClinicalScaler().fit(train)
    x_train = s.transform(train)
    # training features are standardised on the training rows
    assert abs(x_train[:, 0].mean()) < 1e-5
    # the test patient's extreme count does not change the fitted scaling
    s2 = ClinicalScaler().fit(train)
    s2.transform(test)
    assert s2.mean_ == s.mean_
    assert np.allclose(ClinicalScaler().fit(p).transform(train)[:, 4], x_train[:, 4]) is False
    # imputed with the training median, and round-trips through JSON-able dicts
    back = ClinicalScaler.from_dict(s.to_dict())
    assert np.array_equal(back.transform(test), s.transform(test))
    assert x_train.dtype == np.float32 and x_train.shape == (3, 6)


def test_transform_before_fit_fails() -> None:
    with pytest.raises(RuntimeError, match="fit"):
        ClinicalScaler().transform(_patients())
