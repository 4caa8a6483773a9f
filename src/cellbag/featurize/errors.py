"""Errors of the featurize stage (encoders, weights, adapters, encoder training, runs)."""

from cellbag.errors import CellbagError


class FeaturizeError(CellbagError, RuntimeError):
    """Featurization cannot start or go on (names the store and the encoder)."""


class EncoderError(CellbagError, ValueError):
    """An encoder cannot be built as asked (names the encoder)."""


class WeightsError(CellbagError, ValueError):
    """A weight source cannot be resolved or does not fit the model (names the file/model)."""


class AdapterError(CellbagError, ValueError):
    """An adapter cannot be added, saved or loaded (the message names the model or file)."""


class TrainingError(CellbagError, ValueError):
    """Bad input to MAE pretraining or fine-tuning (names the file, patient or model)."""


class DecodeError(CellbagError, ValueError):
    """A decode mode cannot be used as asked (names the mode and the device)."""


class RankAborted(FeaturizeError):
    """This rank stops because rank 0 failed to set the job up (rank 0 says why)."""
