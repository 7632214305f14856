"""railyard-ml: turn a Label Studio ML backend class (`predict` / `fit`) into the server Label Studio calls.

    from railyard_ml import LabelStudioMLBase     # was: from label_studio_ml.model import LabelStudioMLBase

    class MyModel(LabelStudioMLBase):
        def predict(self, tasks, context=None, **kwargs): ...
        def fit(self, event, data, **kwargs): ...           # or fit(self, annotations, workdir=None, **kwargs)

`railyard-ml init DIR --script model.py` makes a runnable backend folder, `railyard-ml start DIR` serves it.

The names below are imported when first asked for (PEP 562): importing any part of the package (`railyard_ml.cli`
for `railyard-ml init`, `railyard_ml.label_config` for Railyard's services) no longer loads the web app
(starlette, pydantic, asyncio: ~0.4 s of CPU), only what that part needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them
    from railyard_ml.api import init_app
    from railyard_ml.label_config import LabelInterface, parse_config
    from railyard_ml.model import LabelStudioMLBase
    from railyard_ml.response import ModelResponse, PredictionValue

_EXPORTS = {  # public name -> the module that defines it
    "LabelInterface": "railyard_ml.label_config",
    "LabelStudioMLBase": "railyard_ml.model",
    "ModelResponse": "railyard_ml.response",
    "PredictionValue": "railyard_ml.response",
    "init_app": "railyard_ml.api",
    "parse_config": "railyard_ml.label_config",
}

# `import railyard_ml` then `railyard_ml.model....`: the submodules the eager imports made attributes stay reachable
_SUBMODULES = {"api", "backend", "cli", "continuous_training", "errors", "label_config", "model", "railyard_step",
               "response", "store", "utils"}

__all__ = ["LabelInterface", "LabelStudioMLBase", "ModelResponse", "PredictionValue", "init_app", "parse_config"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")  # the import sets it as an attribute of the package
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # asked for once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
