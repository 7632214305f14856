"""Typed predictions, as label_studio_ml.response.ModelResponse and label-studio-sdk's PredictionValue."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class PredictionValue(BaseModel):
    """One prediction for one task: its regions/choices (`result`), a score and the model version."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_version: Any | None = None
    score: float | None = 0.0
    result: list[Any] = []


class ModelResponse(BaseModel):
    """What `predict` may return: one prediction (or a list of them) per task, in task order."""

    model_config = ConfigDict(protected_namespaces=())

    model_version: str | None = None
    # PredictionValue, dicts, lists of either, or any pydantic model with the same fields (label-studio-sdk's)
    predictions: list[PredictionValue | dict | list | Any]

    def has_model_version(self) -> bool:
        return bool(self.model_version)

    def set_version(self, version: str) -> None:
        """Set the response's version and every prediction's that has none."""
        self.model_version = version
        self.update_predictions_version()

    def update_predictions_version(self) -> None:
        for prediction in self.predictions:
            for one in prediction if isinstance(prediction, list) else [prediction]:
                if isinstance(one, dict):
                    if not one.get("model_version"):
                        one["model_version"] = self.model_version
                elif hasattr(one, "model_version"):
                    if not one.model_version:
                        one.model_version = self.model_version
