"""`mac.inference.creation.InferenceBuilder`: builds an Inference and assigns its model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from mac.config.inference import CustomInferenceConfig
from mac.inference import Inference


class InferenceBuilder(ABC):
    @property
    @abstractmethod
    def inference(self) -> Any:
        """A new, model-less instance of the Inference subclass."""

    @abstractmethod
    def create(self, config: CustomInferenceConfig) -> Inference:
        """The Inference with its model loaded from files under `config.model_path`."""
