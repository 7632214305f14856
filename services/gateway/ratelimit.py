"""Token buckets for the token endpoint, per source address and per confidential client id, in the gateway's
memory.

Why not a library: the limits here are two in-process buckets checked once per token request, with no shared
store (each gateway replica limits what it sees; the auth service's per-source lockout is the durable part). A
token bucket is a dozen lines; `limits`/`slowapi` would bring storage backends and decorators we would not use.
The table is bounded (least recently used keys go first) so a flood of source addresses cannot grow it.

Who shares a bucket: a source is counted as `source_address.counted_as` keys it (an IPv6 client by its /64: the
addresses inside one are free to whoever has it). A client id is only a shared bucket for the client_credentials
grant with that client's secret (its digest is part of the key: a request with a made-up secret gets a bucket of its
own, so it cannot spend the real callers'; the auth service then refuses it): there the client is the whole
credential, a workspace's inference client whose secret only its owners hold. A public client (the web UI's
`railyard-ui`) proves nothing, so anyone can name it: one bucket for it would let one attacker with a few addresses
spend every user's sign-ins (a denial of service of the UI). Its requests are counted per source address only.

Decision: the login client's (`api-client`'s) password and refresh_token grants spend no client bucket either. Its
secret is every user's (`railyard login` ships it), so its bucket was one allowance for every CLI and SDK sign-in:
one user with a dozen addresses, each within its source's 10/s, emptied its 100/s and everyone else's sign-in got 429.
It bounded nothing the auth service needs: one auth process checks ~6-12 default-cost argon2 passwords a second on
2 cores (docs/auth.md), far below 100/s, and guessing is bounded per source and per (name tried, source) anyway.

A logout (the logout endpoint) counts as the refresh_token grant it stands for: a user's refresh token and its
client's credentials (the login client's, or the UI's public one; an inference client holds no refresh token), so it
spends the source's bucket, the same one as the token route's, and no client bucket (services/gateway/http.py
`client_form`, one code for both routes' first steps).

Decision: no bucket per account name. One counted every password sign-in of a name before the password was checked,
from any address, so two or three addresses spent it and the real user got 429 from their own address (anyone could
block a named user's sign-in). Guessing one account from many addresses is bounded by each source's bucket and the
auth service's failed-login delay and lock per (name tried, source) instead, which never touch another source's attempts
(docs/auth.md, "Brute force").
"""

from __future__ import annotations

import hashlib
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
    """The token endpoint's limits: per source address (checked before the body is read; an IPv6 source by its /64)
    and per confidential client (a request carrying a secret)."""

    def __init__(self, per_source: TokenBuckets, per_client: TokenBuckets) -> None:
        self.per_source = per_source
        self.per_client = per_client

    def check_source(self, source: str) -> None:
        """One request from `source`, the key `counted_as` gives (an IPv6 client's /64): the routes count the source
        once, as they also send it to the auth service."""
        if wait := self.per_source.take(source):
            raise TooManyRequests("too many token requests from this address; slow down", retry_after=wait)

    def check_client(self, client_id: str, secret: str, grant_type: str) -> None:
        """One client_credentials request of a confidential client, keyed by the id and the secret it presents (its
        digest): only callers who know the secret share the client's bucket, so made-up secrets cannot spend it (the
        auth service refuses them, at microseconds each, and the source's bucket bounds each address). Other grants
        carry a user's credentials and spend no client bucket (the login client's secret is every user's). The route
        refused a client id over CLIENT_ID_CHARS (128) and a secret over SECRET_CHARS before this (http.py
        `_client_credentials`, `client_form`): the key holds the id as sent, which was up to a 1 MiB form field."""
        if grant_type != "client_credentials":
            return
        key = f"{client_id}:{hashlib.sha256(secret.encode()).hexdigest()[:32]}"
        if wait := self.per_client.take(key):
            raise TooManyRequests("too many token requests for this client; slow down", retry_after=wait)
