"""`railyard dead-letters list|replay`: an operator's look at the durable consumers' dead letters (shared/consumers.py)
and the replay of one.

A replay publishes the row's payload, with its stored headers, to its original subject on the EVENTS stream under a
new `Nats-Msg-Id` (the original's would be dropped by JetStream's duplicate window, or name another message; the
same for a replay run again before its row is marked, which the stream then drops as a duplicate), a
`Railyard-Replay-Of` header (`<service>/<id>`) and a `Railyard-Replay-For` header naming the row's durable, waits for
the stream's ack, then marks the row replayed (the time and the new message id). Only that durable handles it: every
durable consumer of shared/consumers.py acknowledges, unhandled, a replay meant for another (JetStream consumers
filter on subjects only, and the other durables of the subject, lineage's `events.>` among them, read the same
subject); before, every consumer of the subject received it a second time. Core NATS subscribers of the subject (the
services' `events.user.deactivated` and `events.auth.*` caches, shared/authz.py's VerifierFeed) read the stream's
subjects as they are published, a replay too: they ignore one (`ignoring_replays`), having read the original when it
was first published; before, every service's cache applied a lineage dead letter of one a second time.
A row whose payload was cut (above 64 KiB) is not replayed, nor one replayed before unless `--again`, nor one whose
durable no longer exists on EVENTS or no longer reads the subject (`_durable_refuses`: nobody would handle it).

The tool connects as a service does, from the settings: `RAILYARD_POSTGRES__DSN` (a role that may read and update the
services' `dead_letters`) and `RAILYARD_NATS__URL`, `..._USER`, `..._PASSWORD` (an identity that may publish the
subject and read the durable's consumer info). What the environment does not set comes from the embedded stack's data
directory (`--data-dir`, else `RAILYARD_STACK__DATA_DIR`, else `.railyard`) as `railyard login` and `status` find
theirs: its `secrets.json` and `run/stack.json` give PostgreSQL's superuser and the bus's `ops` identity, so against a
`make run` stack the command needs no setting (`with_stack_credentials`); when it cannot, a failure to connect says
where it looked (`stack_note`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.settings import Settings

SERVICES = ("auth", "log_store", "monitoring", "workflow_lineage")
"""The services whose durable event consumers keep dead letters (each in its own schema)."""
REPLAY_HEADER = "Railyard-Replay-Of"
REPLAY_FOR_HEADER = "Railyard-Replay-For"
"""The durable a dead letter's replay is meant for: the subject's other durables acknowledge it without handling it
(shared/consumers.py), its core NATS subscribers ignore it (`ignoring_replays`)."""
NOT_FOUND = 4
"""The exit status of a dead letter that is not there (README: 4 not found)."""
REPLAY_NAMESPACE = uuid.UUID("5f1c0e2a-9d4b-4c53-8a43-2f7d6b0c9e11")
"""Of the replays' message ids (`replay_msg_id`)."""


def is_replay(headers: Mapping[str, str] | None) -> bool:
    """Is a message with these headers a dead letter's replay (`railyard dead-letters replay`)?"""
    return bool(headers) and REPLAY_FOR_HEADER in headers  # type: ignore[operator]


def ignoring_replays(callback: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """`callback` of a core NATS subscription (nats-py's `subscribe(subject, cb=...)`) of a subject the EVENTS stream
    keeps, made to skip a dead letter's replay: the replay is published on the original subject for the one durable
    consumer that gave up on it, and a core subscriber, which read the original when it was published, would
    otherwise apply it a second time (a revocation, a key refetch in every service). Every core subscriber of an
    event subject takes its callback through this."""

    async def skipping_replays(msg: Any) -> None:
        if is_replay(msg.headers):
            return
        await callback(msg)

    skipping_replays.__name__ = getattr(callback, "__name__", "skipping_replays")
    skipping_replays.__doc__ = callback.__doc__
    return skipping_replays


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="the dead letters, newest first (not replayed ones unless --all)")
    listing.add_argument("--service", choices=SERVICES, help="one service's only")
    listing.add_argument("--all", action="store_true", help="replayed ones too")
    listing.add_argument("--limit", type=int, default=50, help="at most this many per service (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replay = sub.add_parser("replay", help="publish one again to its durable consumer and mark it replayed")
    replay.add_argument("service", choices=SERVICES)
    replay.add_argument("id", type=int, help="its id (`railyard dead-letters list`)")
    replay.add_argument("--again", action="store_true", help="replay one replayed before")
    for action in (listing, replay):  # as `railyard up|status|down|login`: where the embedded stack's secrets are
        action.add_argument("--data-dir", metavar="DIR", help="the embedded stack's data directory, whose secrets give"
                            " the database and bus credentials the environment does not set (default"
                            " RAILYARD_STACK__DATA_DIR, else .railyard)")


def _set(environ: Mapping[str, str], *names: str) -> bool:
    """Does the environment set any of these settings (pydantic-settings reads their names in any case, and a
    nested group as JSON under its own name)?"""
    given = {key.upper() for key in environ}
    return any(name in given for name in names)


_POSTGRES_SET = ("RAILYARD_POSTGRES__DSN", "RAILYARD_POSTGRES")
_NATS_SET = ("RAILYARD_NATS__URL", "RAILYARD_NATS__USER", "RAILYARD_NATS__PASSWORD", "RAILYARD_NATS")


def _stack_secrets(data_dir) -> tuple[dict | None, str]:
    """The data directory's secrets.json, or None and why not."""
    path = data_dir / "secrets.json"
    try:
        secrets = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None, f"no embedded stack's secrets in {data_dir}"
    except (OSError, ValueError) as exc:  # another user's stack (mode 0600), a file cut short
        return None, f"cannot read the embedded stack's secrets in {data_dir}: {' '.join(str(exc).split())}"
    if not isinstance(secrets, dict):
        return None, f"{path} is not an embedded stack's secrets file"
    return secrets, ""


def stack_note(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """What a failure to connect adds to its one line when the environment leaves the database's or the bus's
    credentials unset and the data directory could not give them (with_stack_credentials): where the secrets were
    looked for and what to set instead; "" when the environment sets both or the secrets were read."""
    environ = os.environ if environ is None else environ
    if _set(environ, *_POSTGRES_SET) and _set(environ, *_NATS_SET):
        return ""
    secrets, why = _stack_secrets(settings.stack.data_dir.expanduser().resolve())
    if secrets is not None:
        return ""
    return f" ({why}: give --data-dir, or set RAILYARD_POSTGRES__DSN and RAILYARD_NATS__*)"


def with_stack_credentials(settings: Settings, environ: Mapping[str, str] | None = None) -> Settings:
    """`settings` with what the environment does not set of the database and the bus taken from the embedded stack
    of `settings.stack.data_dir`, as `railyard login` and `status` read it: PostgreSQL's superuser (the one role
    that reads every service's `dead_letters`) from its `secrets.json`, the bus's `ops` identity (it may publish
    every event subject), the ports from the running stack's `run/stack.json` (else the settings'). Before, the
    command read the environment only: against a `make run` stack, without RAILYARD_POSTGRES__DSN and the bus's
    credentials typed in from the secrets file, it could not log in to PostgreSQL. Unchanged when the data
    directory has no secrets file (another deployment: its settings are the environment's)."""
    from shared.bus_identities import OPS
    from shared.embedded.stack import read_state

    environ = os.environ if environ is None else environ
    data_dir = settings.stack.data_dir.expanduser().resolve()
    secrets, _ = _stack_secrets(data_dir)
    if secrets is None:  # a failure to connect then says why (stack_note)
        return settings
    try:
        ports = (read_state(data_dir) or {}).get("ports") or {}
    except OSError:  # run/ is the stack owner's (0700): the settings' ports
        ports = {}
    host = settings.stack.host
    update: dict[str, Any] = {}
    if not _set(environ, *_POSTGRES_SET) and "postgres_password" in secrets:
        port = ports.get("postgres", settings.stack.postgres_port)
        dsn = f"postgresql://railyard:{secrets['postgres_password']}@{host}:{port}/railyard"
        update["postgres"] = settings.postgres.model_copy(update={"dsn": dsn})
    if not _set(environ, *_NATS_SET) and f"nats_password_{OPS}" in secrets:
        port = ports.get("nats", settings.stack.nats_port)
        update["nats"] = settings.nats.model_copy(update={
            "url": f"nats://{host}:{port}", "user": OPS, "password": secrets[f"nats_password_{OPS}"]})
    return settings.model_copy(update=update)


def run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio  # here: `railyard`'s every command builds this parser, none other needs asyncio

    settings = with_stack_credentials(settings)
    return asyncio.run(_list(args, settings) if args.action == "list" else _replay(args, settings))


async def _connect_db(settings: Settings):
    import asyncpg

    return await asyncpg.connect(settings.postgres.dsn, timeout=settings.nats.connect_timeout + 8)


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    conn = await _connect_db(settings)
    try:
        rows = []
        for service in (args.service,) if args.service else SERVICES:
            rows += [(service, row) for row in await conn.fetch(
                f'SELECT id, durable, subject, stream_seq, deliveries, error, payload_size, created_at, replayed_at,'
                f' replay_msg_id FROM "{service}".dead_letters WHERE $1 OR replayed_at IS NULL'
                f" ORDER BY created_at DESC, id DESC LIMIT $2", args.all, args.limit)]
    finally:
        await conn.close()
    rows.sort(key=lambda item: item[1]["created_at"], reverse=True)
    if args.json:
        for service, row in rows:
            print(json.dumps({"service": service, **dict(row)}, default=str))
        return 0
    if not rows:  # as the client's lists print an empty one (railyard_client.cli show), not a bare header
        print("(none)")
        return 0
    print(f"{'service':<17}{'id':>6}  {'created':<20}{'durable':<36}{'subject':<34}{'seq':>8}{'tries':>6}  "
          f"{'replayed':<9}error")
    for service, row in rows:
        print(f"{service:<17}{row['id']:>6}  {row['created_at']:%Y-%m-%d %H:%M:%S}  {row['durable']:<36}"
              f"{row['subject']:<34}{row['stream_seq']:>8}{row['deliveries']:>6}  "
              f"{'yes' if row['replayed_at'] else 'no':<9}{' '.join(row['error'].split())[:100]}")
    return 0


def replay_msg_id(service: str, row_id: int, row) -> str:
    """The `Nats-Msg-Id` of a row's next replay: the same until the row is marked replayed. A replay whose publish
    was stored but not marked (its ack lost to a timeout, or the mark's commit failed) and that is run again sends the
    same id, which the stream drops as a duplicate within its window (2 minutes) instead of delivering the event to
    every consumer twice; after a mark (`--again`) the id is a new one."""
    key = (f"{service}/{row_id}/{row['stream']}/{row['stream_seq']}/{row['stream_time'].isoformat()}/"
           f"{row['replay_msg_id'] or ''}")
    return str(uuid.uuid5(REPLAY_NAMESPACE, key))


class Unreachable(OSError):
    """No server answered."""


class _BusErrors(list):
    """The errors the server sent on a connection (`add`, its error callback), its publishes' permissions violations
    read by `refusals` (shared.raw_bus.PublishRefusals, as a service's broker reads its own)."""

    def __init__(self) -> None:
        super().__init__()
        from shared.raw_bus import PublishRefusals

        self.refusals = PublishRefusals()

    def add(self, exc: BaseException) -> None:
        self.append(exc)
        self.refusals.note(exc)


async def _unless_refused(call: Awaitable[Any], bus_errors: _BusErrors, subject: str) -> Any:
    """`call`'s answer, or the permissions violation for publishing to `subject` as soon as the server sends it
    (PublishRefusals.unless_refused), raised as the server sent it, which the command prints: the server drops a
    message its sender may not publish and answers nothing, so the call would only end at its timeout (the request
    timeout, 5 s), while the violation arrives at once (an async -ERR, error_cb). Only a violation that arrives while
    the call waits and names its subject ends it; any other, or none, leaves the call to answer or time out as
    before."""
    from shared.raw_bus import PublishRefused

    try:
        return await bus_errors.refusals.unless_refused(call, subject)
    except PublishRefused as refused:
        raise refused.violation from None


async def _connect_bus(settings: Settings) -> tuple[Any, _BusErrors]:
    """A connection to the bus as `settings.nats` says (a comma-separated URL is a cluster's servers, as for the
    services), each server tried twice (nats-py reads 0 attempts as no limit), and the errors the server sent
    meanwhile (kept, not logged: nats-py's own handler printed a traceback for each, and its default retries took two
    minutes for a server that is away)."""
    import nats

    from shared.raw_bus import connect_options

    errors = _BusErrors()

    async def keep(exc: Exception) -> None:
        errors.add(exc)

    servers = [url.strip() for url in settings.nats.url.split(",") if url.strip()]
    try:
        nc = await nats.connect(servers, **connect_options(settings.nats),
                                connect_timeout=settings.nats.connect_timeout, allow_reconnect=False,
                                max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=keep)
    except nats.errors.NoServersError:  # say why the last one refused
        raise (errors[-1] if errors else Unreachable("no NATS server answered")) from None
    return nc, errors


async def _durable_refuses(nc: Any, bus_errors: _BusErrors, durable: str, subject: str) -> str | None:
    """Why a replay for `durable` of a message of `subject` would reach nobody (None: it reaches `durable`): the
    durable consumer no longer exists on EVENTS, or its filter no longer takes the subject. Every other durable
    acknowledges a replay meant for another (shared/consumers.py) unread."""
    import nats.errors
    from nats.js.errors import NotFoundError

    from shared import subjects

    try:
        info = await _unless_refused(nc.jetstream().consumer_info(subjects.EVENTS_STREAM, durable), bus_errors,
                                     f"$JS.API.CONSUMER.INFO.{subjects.EVENTS_STREAM}.{durable}")
    except NotFoundError:
        return (f"its durable consumer {durable} no longer exists on {subjects.EVENTS_STREAM}: nothing would handle"
                " the replay (the subject's other consumers leave it)")
    except nats.errors.TimeoutError:
        refused = [e for e in bus_errors if "permissions violation" in str(e)]
        if refused:  # an identity that may not read the consumer's info gets no answer, only the server's error
            raise refused[-1] from None
        raise
    filters = [f for f in [info.config.filter_subject, *(info.config.filter_subjects or [])] if f]
    if filters and not any(subjects.covers(f, subject) for f in filters):
        return (f"its durable consumer {durable} no longer reads {subject} (it reads {', '.join(filters)}): nothing"
                " would handle the replay (the subject's other consumers leave it)")
    return None


async def _replay(args: argparse.Namespace, settings: Settings) -> int:
    import nats.errors

    from shared import subjects

    nc, bus_errors = await _connect_bus(settings)  # before the row's lock: connecting may take a while
    try:
        conn = await _connect_db(settings)
        try:
            async with conn.transaction():  # the row locked from the check to the mark: two replays are not both sent
                row = await conn.fetchrow(
                    f'SELECT durable, subject, payload, payload_size, headers, replayed_at, replay_msg_id, stream,'
                    f' stream_seq, stream_time FROM "{args.service}".dead_letters WHERE id = $1 FOR UPDATE', args.id)
                if row is None:
                    print(f"railyard: {args.service} has no dead letter {args.id}", file=sys.stderr)
                    return NOT_FOUND
                if row["replayed_at"] is not None and not args.again:
                    print(f"railyard: {args.service} dead letter {args.id} was replayed at {row['replayed_at']}"
                          " (--again replays it once more)", file=sys.stderr)
                    return 1
                if len(row["payload"]) < row["payload_size"]:
                    print(f"railyard: {args.service} dead letter {args.id} kept only {len(row['payload'])} of its"
                          f" {row['payload_size']} bytes: not replayed", file=sys.stderr)
                    return 1
                # a replay is handled by its durable only (the others acknowledge it unread): one that is gone, or no
                # longer reads the subject, would leave it handled by nobody, the row marked replayed all the same
                refused = await _durable_refuses(nc, bus_errors, row["durable"], row["subject"])
                if refused:
                    print(f"railyard: {args.service} dead letter {args.id} not replayed: {refused}", file=sys.stderr)
                    return 1
                msg_id = replay_msg_id(args.service, args.id, row)
                # the server's own headers (Nats-Msg-Id, Nats-Expected-*) are not the replay's
                headers = {k: v for k, v in json.loads(row["headers"]).items() if not k.lower().startswith("nats-")}
                # only the durable that gave up on it handles it: the subject's other consumers acknowledge it unread
                headers |= {"Nats-Msg-Id": msg_id, REPLAY_HEADER: f"{args.service}/{args.id}",
                            REPLAY_FOR_HEADER: row["durable"]}
                try:
                    ack = await _unless_refused(nc.jetstream().publish(
                        row["subject"], row["payload"], stream=subjects.EVENTS_STREAM, headers=headers,
                        timeout=settings.nats.request_timeout), bus_errors, row["subject"])
                except nats.errors.TimeoutError:
                    # an identity that may not publish the subject gets no answer, only an error from the server
                    refused = [e for e in bus_errors if "permissions violation for publish" in str(e)]
                    if refused:
                        raise refused[-1] from None
                    raise
                await conn.execute(f'UPDATE "{args.service}".dead_letters SET replayed_at = now(),'
                                   " replay_msg_id = $2 WHERE id = $1", args.id, msg_id)
        finally:
            await conn.close()
    finally:
        await nc.close()
    again = ", sent by an earlier replay that was not marked: the stream kept it once" if ack.duplicate else ""
    print(f"railyard: replayed {args.service} dead letter {args.id} to {row['subject']} for {row['durable']} (stream"
          f" sequence {ack.seq}, Nats-Msg-Id {msg_id}{again})")
    return 0
