"""Clinical features: fixed reference date, one-hot gender, log count, train-only scaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from cellbag.data import ClinicalScaler, raw_clinical
from cellbag.data.clinical import FEATURE_NAMES


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


def test_transform_before_fit_raises_not_fitted() -> None:
    with pytest.raises(NotFittedError, match="fit"):
        ClinicalScaler().transform(_patients())
    with pytest.raises(NotFittedError):
        ClinicalScaler().to_dict()


def test_scaler_is_a_scikit_learn_transformer() -> None:
    p = _patients()
    s = ClinicalScaler(reference_date="2010-01-01")
    assert s.get_params() == {"reference_date": "2010-01-01"}
    twin = clone(s)
    assert twin.get_params() == s.get_params() and not hasattr(twin, "mean_")
    x = s.fit_transform(p)
    assert np.array_equal(x, ClinicalScaler("2010-01-01").fit(p).transform(p))
    assert s.get_feature_names_out().tolist() == list(FEATURE_NAMES)
    # in a pipeline, fit on the training rows only
    pipe = make_pipeline(ClinicalScaler(), FunctionTransformer())
    assert np.array_equal(
        pipe.fit(p.iloc[:3]).transform(p), ClinicalScaler().fit(p.iloc[:3]).transform(p)
    )


def test_a_scaler_saved_before_it_was_an_estimator_still_loads() -> None:
    """clinical.json as model folders hold it (and older ones without ``extra``)."""
    saved = {
        "reference_date": "2020-01-01",
        "median": {"age": 40.0, "log_lymph_count": 2.0},
        "mean": {"age": 45.0, "log_lymph_count": 2.5},
        "std": {"age": 10.0, "log_lymph_count": 0.5},
    }
    s = ClinicalScaler.from_dict(saved)
    x = s.transform(_patients())
    assert x[0, 0] == pytest.approx((70.0 - 45.0) / 10.0, abs=1e-3)
    assert x[2, 0] == pytest.approx((40.0 - 45.0) / 10.0)  # imputed with the saved median
    assert s.to_dict() == {**saved, "extra": []}


@pytest.mark.parametrize("dates", ["datetime", "text"])
def test_a_cv_fold_scales_what_the_scaler_scales_on_its_rows(dates) -> None:
    """cross-validation computes the raw features of the whole table once and takes each
    fold's rows (dates as text are parsed with the fold's rows, as before): the same
    scaled features and state as a scaler fitted on that fold's patients table."""
    from cellbag.aggregate import BagSet
    from cellbag.evaluate import fitting

    rng = np.random.default_rng(0)
    n = 30
    p = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n)],
            "gender": rng.choice(["M", "F", None], n),
            "dob": pd.to_datetime("1930-01-01") + pd.to_timedelta(rng.integers(0, 20000, n), "D"),
            "lymph_count": np.where(rng.random(n) < 0.2, np.nan, rng.lognormal(2, 1, n)),
            "hb": rng.normal(13, 2, n),  # an extra numeric column
        }
    )
    if dates == "text":
        p["dob"] = p["dob"].dt.strftime("%Y-%m-%d")
    data = BagSet.from_arrays([np.zeros((2, 3))] * n, np.arange(n) % 2, list(p["patient_id"]), p)
    for seed in (0, 1):
        idx = np.random.default_rng(seed).permutation(n)
        train, test = np.sort(idx[:20]), np.sort(idx[20:])
        got_tr, got_te, state = fitting.clinical_fold(data, train, test)
        ref = ClinicalScaler().fit(data.patients.iloc[train])
        assert np.array_equal(got_tr, ref.transform(data.patients.iloc[train]))
        assert np.array_equal(got_te, ref.transform(data.patients.iloc[test]))
        assert state == ref.to_dict() and "hb" in state["extra"]
    assert (fitting._RAW is not None and fitting._RAW[0] is data.patients) == (dates == "datetime")
