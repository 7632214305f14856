"""Token buckets for the token endpoint, per source address and per client id, in the gateway's memory.

Why not a library: the limits here are two in-process buckets checked once per token request, with no shared
store (each gateway replica limits what it sees; the auth service's per-source lockout is the durable part). A
token bucket is a dozen lines; `limits`/`slowapi` would bring storage backends and decorators we would not use.
The table is bounded (least recently used keys go first) so a flood of source addresses cannot grow it.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from shared.errors import TooManyRequests


class TokenBuckets:
    """One bucket per key: `burst` requests at once, refilled at `rate` per second."""

    def __init__(self, rate: float, burst: int, max_keys: int = 65_536, clock=time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, updated at)

    def take(self, key: str) -> float:
        """Spend one request of `key`'s bucket: 0.0 when allowed, else the seconds until one is available."""
        now = self.clock()
        tokens, updated = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class TokenEndpointLimits:
    """The token endpoint's two limits: per source address (checked before the body is read) and per client."""

    def __init__(self, per_source: TokenBuckets, per_client: TokenBuckets) -> None:
        self.per_source = per_source
        self.per_client = per_client

    def check_source(self, source: str) -> None:
        if wait := self.per_source.take(source):
            raise TooManyRequests("too many token requests from this address; slow down", retry_after=wait)

    def check_client(self, client_id: str) -> None:
        if wait := self.per_client.take(client_id):
            raise TooManyRequests("too many token requests for this client; slow down", retry_after=wait)
