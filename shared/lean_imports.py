"""Optional packages a Railyard process declines, so that libraries which import them only because they are
installed do not load them (docs/performance.md, "memory": every process of the stack pays for what it imports).

- `aiohttp`: nats-py imports it when it is installed, for NATS over WebSocket, which Railyard never uses (its
  URLs are nats://); the dev extra installs it (tritonclient[http]). ~10 MiB of RSS in every service and replica.
- `uvicorn`: FastStream imports it when it is installed, for serving a broker over ASGI, which Railyard does not
  do; only the gateway serves HTTP with it. ~3 MiB in every other process.

`decline_unused()` must run before anything imports nats or faststream: first thing in a process's entry
module. A declined name is in `sys.modules` as None, which makes `import aiohttp` raise ImportError, exactly as
when the package is absent, the case those libraries handle.
"""

from __future__ import annotations

import sys


def decline_unused(serves_http: bool = False) -> None:
    """Keep this process from importing the packages above (uvicorn stays importable when `serves_http`)."""
    names = ["aiohttp"] + ([] if serves_http else ["uvicorn"])
    for name in names:
        sys.modules.setdefault(name, None)
