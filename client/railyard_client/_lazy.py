"""Heavy libraries imported on first use: `import railyard_client` and the `railyard` command start without
pandas, pyarrow and numpy (about 0.3 s of imports) until something reads or writes a table."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for a module; the first attribute read imports it (later reads find it in sys.modules)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        module: ModuleType = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def is_dataframe(value: Any) -> bool:
    """Whether `value` is a pandas DataFrame, without importing pandas: until something has imported it, nothing
    is one (`isinstance(value, pd.DataFrame)` would import it, 0.3-1 s, for a command that never needs it)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)


np = LazyModule("numpy")
pd = LazyModule("pandas")
pa = LazyModule("pyarrow")
pq = LazyModule("pyarrow.parquet")
pacsv = LazyModule("pyarrow.csv")
