"""Errors a BYOP model may raise or meet."""


class InferenceDataValidationError(ValueError):
    """The input or output is not a dictionary of numpy arrays with equal row counts."""


class ModelNotAssignedError(RuntimeError):
    """predict was called before the builder assigned a model."""


class InvalidModelTypeError(TypeError):
    """The builder assigned a model the Inference does not expect."""
