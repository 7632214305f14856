"""`InferenceData`: a dictionary of numpy arrays, one per input or output column (rows first)."""

from __future__ import annotations

import numpy as np

InferenceData = dict[str, np.ndarray]
