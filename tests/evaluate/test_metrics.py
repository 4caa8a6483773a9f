import math

import numpy as np
import pytest

from cellbag.evaluate.metrics import binary_metrics, youden_threshold


@pytest.mark.parametrize("p", [0.1, 0.9])
def test_constant_predictor_scores_half(p):
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    m = binary_metrics(y, np.full(len(y), p))
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    assert m["roc_auc"] == pytest.approx(0.5)


def test_balanced_accuracy_argument_order():
    # (y_true, y_pred): recall(0) = 2/3, recall(1) = 1 -> 0.8333; swapped it would be 0.75
    y = np.array([0, 0, 0, 1])
    m = binary_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(2 / 3)


def test_threshold_is_inclusive_and_single_class_auc_nan():
    m = binary_metrics(np.array([1, 1]), np.array([0.5, 0.4]))
    assert m["sensitivity"] == 0.5
    assert math.isnan(m["roc_auc"]) and math.isnan(m["specificity"])


def test_youden_picks_the_separating_cut():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.9])
    t = youden_threshold(y, p)
    assert binary_metrics(y, p, t)["balanced_accuracy"] == 1.0
    assert 0.3 < t <= 0.35
