"""Cohorts (challenge and manifest layouts), clinical features and the demo cohort."""

from cellbag.core.lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_REFERENCE_DATE": "cellbag.data.clinical",
    "ClinicalScaler": "cellbag.data.clinical",
    "raw_clinical": "cellbag.data.clinical",
    "Cohort": "cellbag.data.cohort",
    "CohortError": "cellbag.data.errors",
    "Problem": "cellbag.data.cohort",
    "read_challenge": "cellbag.data.cohort",
    "read_cohort": "cellbag.data.cohort",
    "read_manifest": "cellbag.data.cohort",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
