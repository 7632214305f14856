"""`mac.config.inference.CustomInferenceConfig`: where the model's files are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class CustomInferenceConfig:
    model_path: Path
    framework: str = "custom"
