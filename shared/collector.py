"""The garbage collector's settings of a long-running Railyard process (services and engine replicas)."""

from __future__ import annotations

import gc


def settle_garbage_collector() -> None:
    """Once a process has loaded everything it serves with: move what exists to the permanent generation so
    collections stop re-scanning the libraries' objects, and collect the young generation less often. Requests
    that build many small containers (1,000-row JSON answers) spent most of their time in the collector."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
