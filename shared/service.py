"""How every service process starts, serves and stops.

A service describes itself with a `ServiceSpec` (its name, a router factory, its migrations, whether
it uses object storage, start/stop hooks). `main(spec)` then:

1. reads `Settings` from the environment;
2. checks that NATS, PostgreSQL and S3 answer, ending with one clear line if one does not;
3. builds the broker (the spec's subscribers plus `<name>.health`), connects, ensures the streams;
4. opens the pool and applies migrations, ensures the buckets, starts the sweep of its staged uploads
   (`staged_bucket`), runs the start hook (`Runtime.stop` is the stop: a hook that waits passes it on, and a stop
   during the hook ends the start there);
5. sets up the durable JetStream consumers (`set_up_consumers`: tried again while JetStream does not answer, for up
   to CONSUMERS_WITHIN seconds, each failed try a warning naming the consumer; then one line and exit code 2),
   starts the subscriptions (FastStream binds each durable consumer after one more CONSUMER.INFO, unretried: a
   failure there, e.g. "nats: timeout", ends the start: the subscriptions already made are stopped, `<name>.health`,
   subscribed last, has never answered, the process exits, code 2 with one line for a timeout, and the supervisor
   starts it again; no service serves half-subscribed. After a reconnect nats-py subscribes again by itself and
   FastStream's task supervisor restarts a pull loop that ended), publishes `events.service.started`
   (`announce_started`: tried for up to STARTED_WITHIN seconds while JetStream does not acknowledge it, then a
   warning; never fatal; a stop ends the tries at once) and logs "serving";
6. serves until SIGTERM or SIGINT, then drains the command subscriptions (every command taken is
   answered), stops the staged-upload sweep, runs the stop hook, stops the event consumers (in-flight
   work finishes and is acknowledged) and closes connections (the database pool's within
   shared.db.POOL_CLOSE_SECONDS: past them they are terminated, whether work still held them or the server
   stopped answering).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
import nats.errors
import nats.js.errors
from faststream.nats import NatsBroker, NatsRouter
from nats.js.api import ConsumerConfig
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    stop_when_event_set,
    wait_exponential,
    wait_fixed,
)

from shared import __version__, subjects
from shared.bus import (
    JETSTREAM_TIMEOUT,
    CallContext,
    check_reachable,
    command,
    ensure_streams,
    make_broker,
    publish_event,
    wait_for_streams,
)
from shared.bus_workers import command_workers, drain_commands
from shared.collector import settle_garbage_collector
from shared.db import close_idle, close_pool, create_pool, load_migrations, migrate, ping
from shared.errors import RailyardError, Unavailable
from shared.messages import CheckHealth, DependencyStatus, HealthReport, ServiceStarted
from shared.objectstore import ALL_BUCKETS, MinioObjectStore, ObjectStore
from shared.probe_files import keep_probe_files
from shared.settings import Settings, load_settings
from shared.staging import StagedBucket, StagedUploadSweep

log = logging.getLogger("railyard.service")

STARTED_WITHIN = 10.0
"""Seconds a start tries to publish its `events.service.started` (`announce_started`) before it serves without it."""
STARTED_ACK_WAIT = JETSTREAM_TIMEOUT
"""Seconds one try waits for JetStream's ack (at most what is left of STARTED_WITHIN)."""
STARTED_RETRY_PAUSE = 0.5
"""Seconds between two tries."""
CONSUMERS_WITHIN = 30.0
"""Seconds a start tries to set up its durable JetStream consumers (`set_up_consumers`) before it ends, as long as
it waits for the streams (`shared.bus.wait_for_streams`)."""
CONSUMER_RETRY_FIRST = 0.5
"""Seconds before a consumer's second try; each later pause doubles, up to CONSUMER_RETRY_MAX."""
CONSUMER_RETRY_MAX = 4.0


@dataclass
class Runtime:
    """What a running service holds; handlers receive what they need from it."""

    name: str
    settings: Settings
    broker: NatsBroker | None = None
    db: asyncpg.Pool | None = None
    objects: ObjectStore | None = None
    started_at: float = field(default_factory=time.monotonic)
    extras: dict[str, Any] = field(default_factory=dict)
    # set by SIGTERM/SIGINT (serve's `stop`): a start hook that waits (the log store's consumer set-up tries) passes
    # it on, so a stop during the start ends that wait at once instead of after it (up to CONSUMERS_WITHIN)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


Hook = Callable[[Runtime], Awaitable[None]]


@dataclass(frozen=True)
class ServiceSpec:
    """A service's identity and wiring."""

    name: str
    build_router: Callable[[Runtime], NatsRouter]
    migrations: Path | None = None
    uses_object_store: bool = False
    on_start: Hook | None = None
    on_stop: Hook | None = None
    # the bucket whose staged uploads the service consumes: the runner sweeps the ones left behind (shared/staging.py)
    staged_bucket: StagedBucket | None = None

    @property
    def schema(self) -> str:
        return self.name


def start_staged_sweep(spec: ServiceSpec, runtime: Runtime) -> None:
    """Start the sweep of the spec's staged bucket on the runtime's object store (kept as
    `runtime.extras["staging_sweep"]`); nothing without a `staged_bucket`."""
    if spec.staged_bucket is None:
        return
    staged = spec.staged_bucket
    sweep = StagedUploadSweep(runtime.objects, staged.bucket, staged.grace_seconds, staged.every)
    runtime.extras["staging_sweep"] = sweep
    sweep.start()


async def stop_staged_sweep(runtime: Runtime) -> None:
    """Stop the staged-upload sweep `start_staged_sweep` started, if any, and wait until it has let go."""
    if (sweep := runtime.extras.get("staging_sweep")) is not None:
        await sweep.stop()


async def check_health(runtime: Runtime) -> HealthReport:
    """Ping every dependency the service uses and report."""
    deps = [DependencyStatus(name="nats", ok=bool(runtime.broker and runtime.broker.config.connection_state))]
    if runtime.db is not None:
        deps.append(await _probe("postgres", ping(runtime.db, runtime.settings.postgres)))
    if runtime.objects is not None:
        deps.append(await _probe("s3", runtime.objects.ping()))
    return HealthReport(
        name=runtime.name,
        version=__version__,
        status="ok" if all(d.ok for d in deps) else "degraded",
        uptime_s=round(time.monotonic() - runtime.started_at, 3),
        pid=os.getpid(),
        dependencies=deps,
    )


async def _probe(name: str, probe: Awaitable[None]) -> DependencyStatus:
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the probe's answer instead of raising
        # CancelledError when it comes in the step a cancel does (bpo-42130); the probe files' loop (a pod's
        # readiness, keep_probe_files) went on after the stop's cancel, and the stop waited for it until a kill
        async with asyncio.timeout(3):
            await probe
    except Exception as exc:  # a health check reports failures, it never raises them
        return DependencyStatus(name=name, ok=False, detail=type(exc).__name__)
    return DependencyStatus(name=name, ok=True)


async def _is_ok(report: Awaitable[HealthReport]) -> bool:
    return (await report).status == "ok"


def build_broker(spec: ServiceSpec, runtime: Runtime) -> NatsBroker:
    """The service's broker with its router and health subscriber (connects only when started).

    The health subscriber is started last: FastStream's `start()` subscribes one subscriber after another (a durable
    one after a JetStream round trip), and the server reads a connection's SUBs in order, so once `<name>.health`
    answers every command of the service is subscribed. Registered on the broker itself it came first (the broker's
    own subscribers start before its routers'), and at load ~30 the stack was healthy while auth had not subscribed
    `auth.token.issue` yet: the first sign-in was a 503 "auth is not running"."""
    broker = make_broker(runtime.settings, spec.name)
    runtime.broker = broker
    with command_workers(runtime.settings.nats.command_workers):
        broker.include_router(spec.build_router(runtime))
    last = NatsRouter()

    @command(last, subjects.health(spec.name), service=spec.name, max_workers=runtime.settings.nats.command_workers)
    async def health(cmd: CheckHealth, ctx: CallContext) -> HealthReport:
        """Report the service's health."""
        return await check_health(runtime)

    broker.include_router(last)
    return broker


async def check_tcp(host: str, port: int, what: str, timeout: float = 2.0) -> None:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
        raise Unavailable(f"cannot reach {what} at {host}:{port} ({reason})") from None
    writer.close()


async def _preflight(spec: ServiceSpec, settings: Settings) -> None:
    await check_reachable(settings.nats.url, settings.nats.connect_timeout)
    if spec.migrations is not None:
        dsn = urlparse(settings.postgres.dsn)
        await check_tcp(dsn.hostname or "127.0.0.1", dsn.port or 5432, "PostgreSQL")
    if spec.uses_object_store:
        endpoint = urlparse(f"//{settings.s3.endpoint}")
        await check_tcp(endpoint.hostname or "127.0.0.1", endpoint.port or 443, "S3")


class _Stopped(Exception):
    """The stop came first: the try under way was given up (`_unless_stopped`), or none was begun."""


async def _unless_stopped(work: Awaitable[Any], stop: asyncio.Event) -> Any:
    """`work`'s result (or its exception); _Stopped, `work` cancelled and not waited for, once `stop` is set first."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((working, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not working.done():  # the stop came first (or this task is cancelled): its answer is not waited for
            working.cancel()
    if working.cancelled() or not working.done():
        raise _Stopped
    return working.result()


def _pause_unless_stopped(stop: asyncio.Event) -> Callable[[float], Awaitable[None]]:
    """tenacity's `sleep` between two tries: `seconds`, or less when `stop` is set meanwhile (the next try then
    finds it set and raises _Stopped: a stop does not wait for a back-off)."""

    async def pause(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()

    return pause


JETSTREAM_BUSY = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError)
"""A JetStream that did not answer (yet): no answer within the wait, nobody listening on its API (JetStream not
enabled yet), 503 (not ready, a cluster without a leader). Worth another try; every other error is an answer."""
ACK_MISSED = (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError)
"""A publish JetStream did not acknowledge: no ack within the wait, a 503, nobody listening."""


async def announce_started(broker: NatsBroker, event: ServiceStarted, stop: asyncio.Event) -> bool:
    """Publish the start's `events.service.started`, trying again for up to STARTED_WITHIN seconds while JetStream
    does not acknowledge it (no ack within STARTED_ACK_WAIT, no responders); True once acknowledged. Every try sends
    the same event (its event_id is the Nats-Msg-Id), so a try whose ack was only late is not stored twice. Never
    raises a bus error: the event is informational (only lineage's event log records it, nothing waits for it), and
    a start that ended on it ended a service that was ready to serve (FastStream's 0.5 s ack wait, at one fsync'd
    write under two stacks' load, exited monitoring with "nats: timeout"). A stop (SIGTERM, also one that came
    during the start) ends the wait at once: the try under way is given up (the event may still be stored), none
    follows (waiting for that try's ack, up to STARTED_ACK_WAIT, would spend the stack's whole 5 s stop grace).
    The tries are tenacity's: STARTED_RETRY_PAUSE apart, none begun when its pause would end past STARTED_WITHIN."""
    began = time.monotonic()
    deadline = began + STARTED_WITHIN
    tries = 0
    last: BaseException | None = None  # the last try's error; None: the stop gave it up

    async def publish() -> None:
        nonlocal tries, last
        if stop.is_set():
            raise _Stopped
        tries += 1
        try:
            await _unless_stopped(publish_event(
                broker, subjects.EVENT_SERVICE_STARTED, event,
                timeout=max(0.1, min(STARTED_ACK_WAIT, deadline - time.monotonic()))), stop)
        except _Stopped:
            last = None
            raise
        except Exception as exc:
            last = exc
            raise

    retrying = AsyncRetrying(retry=retry_if_exception_type(ACK_MISSED),
                             stop=stop_when_event_set(stop) | stop_before_delay(STARTED_WITHIN),
                             wait=wait_fixed(STARTED_RETRY_PAUSE), sleep=_pause_unless_stopped(stop), reraise=True)
    try:
        await retrying(publish)
        return True
    except _Stopped:
        pass
    except nats.errors.Error:  # unacknowledged to the end, JetStream refused it (the stream full), the bus down
        pass
    what = (f"{tries} {'try' if tries == 1 else 'tries'} in {time.monotonic() - began:.1f} s, last: "
            f"{'cancelled' if last is None else str(last) or type(last).__name__}")
    if stop.is_set():
        log.info("%s not acknowledged by JetStream before the stop (%s)", subjects.EVENT_SERVICE_STARTED, what)
        return False
    log.warning("%s not acknowledged by JetStream (%s): serving without it (lineage's event log may miss this start)",
                subjects.EVENT_SERVICE_STARTED, what)
    return False


@dataclass(frozen=True)
class DurableConsumer:
    """A durable pull consumer one of the broker's subscribers reads (`broker.start()` binds to it)."""

    stream: str
    durable: str
    subject: str
    config: ConsumerConfig


def durable_consumers(broker: NatsBroker) -> list[DurableConsumer]:
    """The durable JetStream pull consumers of the broker's subscribers, in their start order (core subscribers,
    the commands, have none)."""
    found = []
    for sub in broker.subscribers:
        options = getattr(sub, "extra_options", None) or {}
        if getattr(sub, "pull_sub", None) is None or not options.get("durable") or not options.get("stream"):
            continue
        found.append(DurableConsumer(options["stream"], options["durable"], sub.subject.broker_address, sub.config))
    return found


async def _set_up_consumer(js: Any, consumer: DurableConsumer) -> None:
    """What nats-py's `pull_subscribe` does before it binds: the consumer's CONSUMER.INFO, and its CREATE (with the
    config `pull_subscribe` would give it) when it does not exist. An existing consumer is left as it is."""
    try:
        await js.consumer_info(consumer.stream, consumer.durable)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = copy.copy(consumer.config)
    if not config.filter_subjects:
        config.filter_subject = consumer.subject
    config.name = config.durable_name = consumer.durable
    try:
        await js.add_consumer(consumer.stream, config=config)
    except nats.js.errors.BadRequestError as refused:  # created meanwhile (another replica of the service): read it
        try:
            await js.consumer_info(consumer.stream, consumer.durable)
        except nats.js.errors.NotFoundError:  # not there: the refusal was this config's (a filter outside the
            raise refused from None  # stream, the stream's consumer limit), not "not found"


async def set_up_consumers(broker: NatsBroker, stop: asyncio.Event) -> bool:
    """Make sure each durable consumer of the broker's subscribers exists before `broker.start()` binds them, trying
    again while JetStream does not answer (JETSTREAM_BUSY: each request waits shared.bus.JETSTREAM_TIMEOUT) with a
    back-off from CONSUMER_RETRY_FIRST to CONSUMER_RETRY_MAX seconds, each failed try a WARNING naming the consumer
    and the stream, for CONSUMERS_WITHIN seconds in all; then Unavailable naming them (the start ends with that one
    line and exit code 2, and the supervisor starts it again). JetStream's refusal (an API error: a filter outside
    the stream, the stream's consumer limit) ends the start at once with one line naming the consumer and JetStream's
    words (RailyardError, exit code 2). A bus identity not allowed to ask gets no answer (nats-server drops the
    request and logs a permissions violation): it is retried as a timeout. False when a stop came first (the request
    under way given up, none follows). Unretried, one answer later than 5 s at a start (ten services creating
    consumers at once on a loaded host, a cluster electing a leader) ended the start with "TimeoutError: nats:
    timeout" naming nothing, and the supervisor redid the whole start."""
    return await set_up_durable_consumers(broker.config.connection_state.stream, durable_consumers(broker), stop)


async def set_up_durable_consumers(js: Any, consumers: list[DurableConsumer], stop: asyncio.Event,
                                   set_up: Callable[[Any, DurableConsumer], Awaitable[None]] = _set_up_consumer,
                                   ) -> bool:
    """`set_up_consumers`'s tries, for consumers a service's own code subscribes (the log store's raw pull
    consumers, on a connection of their own: `js`): `set_up(js, consumer)` for each (default: its CONSUMER.INFO, and
    CREATE when missing), retried, logged and ended as `set_up_consumers` says."""
    if not consumers:
        return True
    began = time.monotonic()
    deadline = began + CONSUMERS_WITHIN

    def told(state: RetryCallState) -> None:
        consumer = state.args[0]
        error = state.outcome.exception() if state.outcome else None
        log.warning("JetStream consumer %s of stream %s: no answer (%s) at try %d; trying again in %.1f s",
                    consumer.durable, consumer.stream, str(error) or type(error).__name__, state.attempt_number,
                    state.upcoming_sleep)

    tries = 0

    async def one(consumer: DurableConsumer) -> None:
        nonlocal tries
        if stop.is_set():
            raise _Stopped
        tries += 1
        await _unless_stopped(set_up(js, consumer), stop)

    for consumer in consumers:
        tries = 0
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(JETSTREAM_BUSY),
            stop=stop_when_event_set(stop) | (lambda state: time.monotonic() + state.upcoming_sleep >= deadline),
            wait=wait_exponential(multiplier=CONSUMER_RETRY_FIRST, max=CONSUMER_RETRY_MAX),
            sleep=_pause_unless_stopped(stop), before_sleep=told, reraise=True)
        try:
            await retrying(one, consumer)
        except _Stopped:
            return False
        except JETSTREAM_BUSY as exc:
            if stop.is_set():
                return False
            raise Unavailable(
                f"JetStream did not set up the consumer {consumer.durable} of stream {consumer.stream} within "
                f"{time.monotonic() - began:.0f} s ({tries} {'try' if tries == 1 else 'tries'}, last: "
                f"{str(exc) or type(exc).__name__}): see nats-server's log for why JetStream does not answer") from None
        except nats.js.errors.APIError as exc:  # an answer: JetStream refused the consumer; one line naming it
            raise RailyardError(
                f"JetStream refused the consumer {consumer.durable} of stream {consumer.stream} (subject "
                f"{consumer.subject}): {exc.description or type(exc).__name__} (code {exc.code}, err_code "
                f"{exc.err_code})") from None
        if tries > 1:
            log.info("JetStream consumer %s of stream %s set up at try %d", consumer.durable, consumer.stream, tries)
    return True


async def serve(spec: ServiceSpec, settings: Settings, stop: asyncio.Event) -> None:
    """Start the service, serve until `stop` is set, then shut down gracefully."""
    await _preflight(spec, settings)
    runtime = Runtime(name=spec.name, settings=settings, stop=stop)
    broker = build_broker(spec, runtime)
    probes: asyncio.Task | None = None
    await broker.connect()
    try:
        if settings.nats.user:  # bus identities: the bootstrap step made the streams, a service may only look
            await wait_for_streams(broker)
        else:  # a NATS without identities (no permissions at all): whoever starts first creates them
            await ensure_streams(broker, settings)
        if spec.migrations is not None:
            applied = await migrate(settings.postgres, spec.schema, load_migrations(spec.migrations))
            runtime.db = await create_pool(settings.postgres, spec.schema)
            if applied:
                log.info("applied migrations %s", applied)
        if spec.uses_object_store:
            store = MinioObjectStore(settings.s3)
            await store.ensure_buckets(ALL_BUCKETS)
            runtime.objects = store
        start_staged_sweep(spec, runtime)
        if spec.on_start is not None:
            await spec.on_start(runtime)
            if stop.is_set():  # the hook gave up what it waited for (runtime.stop): nothing more is started
                raise _Stopped("its start hook ran")
        if not await set_up_consumers(broker, stop):
            raise _Stopped
        await broker.start()
        if runtime.db is not None:
            close_idle(runtime.db)  # the start's queries are done: no backend waits 30 s for more (shared/db.py)
        settle_garbage_collector()
        runtime.started_at = time.monotonic()
        await announce_started(broker, ServiceStarted(name=spec.name, version=__version__, pid=os.getpid()), stop)
        log.info("%s %s serving (pid %d)", spec.name, __version__, os.getpid())
        if settings.probe_dir is not None:  # container probes read these files (shared/probe_files.py)
            probes = asyncio.create_task(keep_probe_files(
                settings.probe_dir, lambda: _is_ok(check_health(runtime))))
        await stop.wait()
        log.info("%s stopping: draining subscriptions", spec.name)
    except _Stopped as stopped:  # a stop while the start hook ran or the consumers were set up: nothing subscribed yet
        log.info("%s stopping: the stop came while %s", spec.name,
                 stopped.args[0] if stopped.args else "its JetStream consumers were set up")
    finally:
        if probes is not None:  # not ready from the first moment of the drain
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
        # Commands first: the server stops routing them here and every one already taken is answered, while
        # what the handlers use is still open (shared/bus_workers.py). Then the stop hook closes the service's
        # own front doors (the gateway's HTTP server) and FastStream stops the event consumers.
        if broker.running:
            await drain_commands(broker, broker.config.graceful_timeout or 15.0)
        await stop_staged_sweep(runtime)
        if spec.on_stop is not None:
            await spec.on_stop(runtime)
        await broker.stop()
        if runtime.db is not None:  # bounded: a server that stopped answering held it until the stack's kill
            await close_pool(runtime.db)
    log.info("%s stopped", spec.name)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def main(spec: ServiceSpec) -> None:
    """Entry point of `python -m services.<name>`."""
    settings = load_settings(f"railyard-{spec.name}")  # every bad setting, named, and exit 2
    configure_logging(settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(spec, settings, stop)

    try:
        import uvloop

        uvloop.run(run())
    except RailyardError as exc:
        print(f"railyard-{spec.name}: {exc.msg}", file=sys.stderr)
        sys.exit(2)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"railyard-{spec.name}: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        sys.exit(2)

