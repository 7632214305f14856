"""The platform's JetStream streams, created by the stack's bootstrap step and by nobody else.

No service may create or update a stream (deploy/nats-permissions.json): at the very first start any service
could otherwise create EVENTS or INFERENCE_LOGS with subjects of its choosing (capturing commands and their
tokens), and a stream's updater could change its subjects later. The bootstrap step connects as the `bootstrap`
bus identity, which may only look at, create and update these two streams, before any service starts: the
embedded stack's supervisor (`railyard up`) runs it after NATS answers, docker-compose as the one-shot
`bus-streams` container, Kubernetes as a Job. It is idempotent: an existing stream only gets what it lacks of
Railyard's settings (`shared.bus.ensure_streams`), so a restarted stack finds its streams as they were. Services
wait for the streams (`shared.bus.wait_for_streams`) and create only their own durable consumers.

    python -m shared.bus_streams    # with RAILYARD_NATS__URL, RAILYARD_NATS__USER=bootstrap and
                                    # RAILYARD_NATS__PASSWORD = the bootstrap identity's password
"""

from __future__ import annotations

import asyncio
import re
import sys
import time

from shared.errors import RailyardError
from shared.settings import Settings, load_settings

TIMEOUT = 30.0  # seconds for the whole step: connecting, then JetStream answering


class BusUnreachable(RuntimeError):
    """NATS did not answer within the step's time, or refused the bootstrap identity."""


def _without_credentials(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", url)


async def bootstrap_streams(settings: Settings, timeout: float = TIMEOUT) -> None:
    """Connect as `settings.nats` (the `bootstrap` identity) and create or complete the platform's streams, and the
    log store's consumer when it does not exist yet (so no record is dropped before the log store first runs),
    retrying while NATS does not listen yet or JetStream is not ready yet (a server that has just started), for
    `timeout` seconds in all. A bus still away then, or one refusing the identity, is BusUnreachable naming the
    server's reason: nats-py reads max_reconnect_attempts=0 as no limit, and its connect alone never gave up."""
    import nats.errors
    from faststream.nats import NatsBroker

    from shared.bus import _with_credentials, ensure_log_store_consumer, ensure_streams
    from shared.raw_bus import connect_options

    refusals: list[Exception] = []

    async def keep(exc: Exception) -> None:
        refusals.append(exc)

    deadline = time.monotonic() + timeout
    options = connect_options(settings.nats)
    # no reconnect once connected (a one-shot step: a lost bus fails it); servers not listening yet are tried again
    # (-1: each one until the deadline below), 0.5 s apart
    broker = NatsBroker(_with_credentials(settings.nats.url, settings.nats.user, settings.nats.password),
                        inbox_prefix=options.get("inbox_prefix", "_INBOX"), name="railyard-bootstrap",
                        connect_timeout=max(settings.nats.connect_timeout, 5.0), allow_reconnect=False,
                        max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=keep)
    try:
        try:
            await asyncio.wait_for(broker.connect(), max(deadline - time.monotonic(), 0.1))
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            reason = refusals[-1] if refusals and isinstance(exc, TimeoutError) else exc
            raise BusUnreachable(f"could not connect to NATS at {_without_credentials(settings.nats.url)} within "
                                 f"{timeout:g}s: {reason or type(reason).__name__}") from None
        while True:
            try:
                await ensure_streams(broker, settings)
                await ensure_log_store_consumer(broker, settings)
                return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.3)
    finally:
        await broker.stop()


def main() -> int:
    """`python -m shared.bus_streams`: the one-shot bootstrap of docker-compose / a Kubernetes Job."""
    settings = load_settings("railyard-bus-streams")  # every bad setting, named, and exit 2
    if not settings.nats.user or not settings.nats.password:
        print("railyard-bus-streams: set RAILYARD_NATS__URL, RAILYARD_NATS__USER=bootstrap and "
              "RAILYARD_NATS__PASSWORD (the bootstrap identity's)", file=sys.stderr)
        return 2
    try:
        asyncio.run(bootstrap_streams(settings, timeout=TIMEOUT))
    except BusUnreachable as exc:  # one line: the stack's start and a Job's log show it as the reason
        print(f"railyard-bus-streams: {exc}", file=sys.stderr)
        return 1
    except RailyardError as exc:  # JetStream refused a stream or the consumer (shared.bus names which, and why)
        print(f"railyard-bus-streams: {exc.msg}", file=sys.stderr)
        return 1
    print("railyard-bus-streams: the platform's streams are ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
