"""`mac.inference.Inference`: serves predictions for one (optional) model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from mac.exceptions import InferenceDataValidationError, InvalidModelTypeError, ModelNotAssignedError
from mac.types import InferenceData


class Inference(ABC):
    """Subclasses define `expected_model_types` and `_predict(input_data) -> InferenceData`; the builder assigns
    `model` (checked against the expected types unless the set is empty)."""

    def __init__(self) -> None:
        self._model: Any | None = None

    @property
    @abstractmethod
    def expected_model_types(self) -> set[Any]:
        """The types `model` may have."""

    @property
    def model(self) -> Any | None:
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        self._raise_error_if_model_is_wrong_type(model)
        self._model = model

    def predict(self, input_data: InferenceData) -> InferenceData:
        self._raise_error_if_model_is_not_assigned()
        _check_data(input_data, "input")
        output = self._predict(input_data)
        _check_data(output, "output")
        return output

    @abstractmethod
    def _predict(self, input_data: InferenceData) -> InferenceData:
        """The prediction itself: a dictionary of numpy arrays in, one out."""

    def _raise_error_if_model_is_not_assigned(self) -> None:
        if self.expected_model_types and self._model is None:
            raise ModelNotAssignedError("the model is not assigned: the InferenceBuilder must set it")

    def _raise_error_if_model_is_wrong_type(self, model: Any) -> None:
        expected = self.expected_model_types
        if expected and not isinstance(model, tuple(expected)):
            names = ", ".join(sorted(t.__name__ for t in expected))
            raise InvalidModelTypeError(f"the model is a {type(model).__name__}; expected {names}")


def _check_data(data: Any, what: str) -> None:
    if not isinstance(data, dict) or not data:
        raise InferenceDataValidationError(f"the {what} must be a non-empty dictionary of numpy arrays")
    rows = None
    for name, value in data.items():
        if not isinstance(value, np.ndarray):
            raise InferenceDataValidationError(f"{what} {name!r} is a {type(value).__name__}, not a numpy array")
        if value.ndim == 0:
            raise InferenceDataValidationError(f"{what} {name!r} has no rows (a 0-d array)")
        if rows is not None and len(value) != rows:
            raise InferenceDataValidationError(f"{what} columns have different row counts")
        rows = len(value)
