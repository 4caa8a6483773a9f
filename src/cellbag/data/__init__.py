"""Cohorts (challenge and manifest layouts), clinical features and the demo cohort."""

from cellbag.data.clinical import DEFAULT_REFERENCE_DATE, ClinicalScaler, raw_clinical
from cellbag.data.cohort import (
    Cohort,
    CohortError,
    Problem,
    read_challenge,
    read_cohort,
    read_manifest,
)

__all__ = [
    "DEFAULT_REFERENCE_DATE",
    "ClinicalScaler",
    "Cohort",
    "CohortError",
    "Problem",
    "raw_clinical",
    "read_challenge",
    "read_cohort",
    "read_manifest",
]
