"""railyard-ml: turn a Label Studio ML backend class (`predict` / `fit`) into the server Label Studio calls.

    from railyard_ml import LabelStudioMLBase     # was: from label_studio_ml.model import LabelStudioMLBase

    class MyModel(LabelStudioMLBase):
        def predict(self, tasks, context=None, **kwargs): ...
        def fit(self, event, data, **kwargs): ...           # or fit(self, annotations, workdir=None, **kwargs)

`railyard-ml init DIR --script model.py` makes a runnable backend folder, `railyard-ml start DIR` serves it.
"""

from railyard_ml.api import init_app
from railyard_ml.label_config import LabelInterface, parse_config
from railyard_ml.model import LabelStudioMLBase
from railyard_ml.response import ModelResponse, PredictionValue

__all__ = ["LabelInterface", "LabelStudioMLBase", "ModelResponse", "PredictionValue", "init_app", "parse_config"]
__version__ = "0.1.0"
