"""A database that cannot answer a command now (PostgreSQL restarting, failing over, out of connections, a pool that
timed out) is a 503 `unavailable` from every service, in one place (shared.bus.run_command with
shared/data_errors.py `database_unavailable`), which the gateway answers with Retry-After and clients ask again. It was
an unhandled error in the handler: run_command's 500 'internal error', which tells a client "a bug, do not retry" (the
task scheduler's token mint fails a run at once on a 500). A real bug (a KeyError, a unique violation, a syntax error,
a misuse of a connection) stays a 500 logged with its traceback.

The connection errors are asyncpg's own, raised by its code against a port nothing listens on, a server that never
answers, and one that refuses the start-up as PostgreSQL does while it starts (57P03) or is full (53300)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import orjson
import pytest

from services.gateway.errors import error_parts
from services.task_scheduler import scheduler
from shared.bus import CallContext, run_command
from shared.errors import Unavailable, error_from_body
from shared.messages.base import Command, Reply

SUBJECT = "registry.models.get"


class Ask(Command):
    name: str = "x"


async def answer(fails: Callable[[], Awaitable[object]]) -> Reply:
    """The reply run_command answers for a handler whose work is `fails()`."""

    async def handler(cmd: Ask, ctx: CallContext) -> dict:
        await fails()
        return {}

    reply = await run_command(handler, Ask, {}, CallContext(subject=SUBJECT))
    assert not reply.ok
    return reply


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dsn(port: int) -> dict:
    return {"host": "127.0.0.1", "port": port, "user": "railyard", "password": "p", "database": "railyard",
            "ssl": False}


@asynccontextmanager
async def server(refusal: tuple[str, str] | None) -> AsyncIterator[int]:
    """A port whose server never answers (None), or refuses the start-up with PostgreSQL's ErrorResponse
    (SQLSTATE, message) as a server starting up or full does."""

    talking: list[tuple[asyncio.Task, asyncio.StreamWriter]] = []

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        talking.append((asyncio.current_task(), writer))
        if refusal is not None:
            (length,) = struct.unpack("!i", await reader.readexactly(4))
            await reader.readexactly(length - 4)  # the start-up message
            fields = b"".join(kind + text.encode() + b"\0" for kind, text in (
                (b"S", "FATAL"), (b"V", "FATAL"), (b"C", refusal[0]), (b"M", refusal[1]))) + b"\0"
            writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            await writer.drain()
        await reader.read()  # held open until the client leaves

    listening = await asyncio.start_server(talk, "127.0.0.1", 0)
    try:
        yield listening.sockets[0].getsockname()[1]
    finally:
        listening.close()
        for _, writer in talking:
            writer.close()  # its read ends: the task ends here, not cancelled by the loop's end (which asyncio logs)
        await asyncio.gather(*(task for task, _ in talking), return_exceptions=True)


async def refused_connection() -> None:
    await asyncpg.connect(**dsn(closed_port()))


async def pool_query_refused() -> None:
    pool = await asyncpg.create_pool(**dsn(closed_port()), min_size=0)
    try:
        await pool.fetchrow("SELECT 1")
    finally:
        await pool.close()


async def connect_timed_out() -> None:
    async with server(None) as port:
        await asyncpg.connect(**dsn(port), timeout=0.2)


async def pool_acquire_timed_out() -> None:
    async with server(None) as port:
        pool = await asyncpg.create_pool(**dsn(port), min_size=0)
        try:
            async with pool.acquire(timeout=0.2):
                pass
        finally:
            pool.terminate()


async def own_bound_on_the_database() -> None:
    """asyncio.timeout around database work: its TimeoutError is raised from the cancel of asyncpg's wait."""
    async with server(None) as port:
        async with asyncio.timeout(0.2):
            await asyncpg.connect(**dsn(port), timeout=30)


async def starting_up() -> None:
    async with server(("57P03", "the database system is starting up")) as port:
        await asyncpg.connect(**dsn(port))


async def too_many_clients() -> None:
    async with server(("53300", "sorry, too many clients already")) as port:
        await asyncpg.connect(**dsn(port))


def raising(exc: BaseException) -> Callable[[], Awaitable[object]]:
    async def fails() -> None:
        raise exc
    fails.__name__ = type(exc).__name__
    return fails


@pytest.mark.parametrize("fails", [
    refused_connection, pool_query_refused, connect_timed_out, pool_acquire_timed_out, own_bound_on_the_database,
    starting_up, too_many_clients,
    # what the server or asyncpg says mid-session: the connection lost, the server shutting down (a restart, a
    # failover), a standby that takes no writes after a failover, the pool closing under a stopping service
    raising(asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")),
    raising(asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")),
    raising(asyncpg.exceptions.CannotConnectNowError("the database system is in recovery mode")),
    raising(asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction")),
    raising(asyncpg.exceptions.DiskFullError("could not extend file: No space left on device")),
    raising(asyncpg.exceptions.InterfaceError("connection is closed")),
    raising(asyncpg.exceptions.InterfaceError("pool is closing")),
    # a rolling update: another process's migration added a column under a statement this one prepared before
    raising(asyncpg.exceptions.InvalidCachedStatementError("cached statement plan is invalid due to a database "
                                                           "schema or configuration change")),
], ids=lambda fails: fails.__name__)
async def test_a_database_that_cannot_answer_is_a_typed_503_asked_again(fails, caplog):
    with caplog.at_level(logging.WARNING, "railyard.bus"):
        reply = await answer(fails)
    status, code, msg = reply.status, reply.error.code, reply.error.msg
    assert (status, code) == (503, "unavailable"), msg  # before: (500, 'internal')
    assert msg.startswith("registry's database did not answer (") and msg.endswith("ask again in a moment"), msg
    assert "127.0.0.1" not in msg and "SELECT" not in msg and "INSERT" not in msg  # no host, no SQL
    assert [r.levelname for r in caplog.records] == ["WARNING"] and not caplog.records[0].exc_info
    logged = caplog.records[0].getMessage()
    assert logged.startswith(f"{SUBJECT}: 503, the database did not answer: "), logged
    if fails.__qualname__.startswith("raising."):  # raised by the test itself: no line of ours asked asyncpg
        assert " (asked at " not in logged, logged
    else:  # the line that asked asyncpg, in place of the traceback (before: the error's repr alone, "TimeoutError()"
        # for a query slower than the pool's command_timeout too)
        assert f" (asked at {__name__}:" in logged and logged.endswith(f" in {fails.__name__})"), logged
    # as the gateway answers it, and as the task scheduler's token mint reads it (scheduler.passing: asked again)
    error = error_from_body(reply.error, reply.status)
    assert isinstance(error, Unavailable)
    http_status, headers, body = error_parts(error)
    assert (http_status, headers.get("Retry-After"), orjson.loads(body)["code"]) == (503, "1", "unavailable")
    assert scheduler.passing(error)


@pytest.mark.parametrize("exc", [
    KeyError("enabled"),
    asyncpg.exceptions.UniqueViolationError('duplicate key value violates unique constraint "users_pkey"'),
    asyncpg.exceptions.PostgresSyntaxError('syntax error at or near "SELEC"'),
    asyncpg.exceptions.UndefinedColumnError('column "nme" does not exist'),
    asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress"),  # a misuse
    asyncpg.exceptions.DataError("invalid input for query argument $1: 'x' (an integer is required)"),  # ours
    # an OSError that is not asyncpg's: object storage, a file, a URL: not the database's to answer for
    ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 9000)"),
    TimeoutError(),
    FileNotFoundError(2, "No such file or directory"),
], ids=lambda exc: type(exc).__name__)
async def test_a_fault_of_ours_stays_a_500_logged_with_its_traceback(exc, caplog):
    with caplog.at_level(logging.WARNING, "railyard.bus"):
        reply = await answer(raising(exc))
    assert (reply.status, reply.error.code, reply.error.msg) == (500, "internal", "internal error")
    assert [r.levelname for r in caplog.records] == ["ERROR"] and caplog.records[0].exc_info


async def protocol_violation() -> None:
    async with server(("08P01", "invalid startup packet layout")) as port:
        await asyncpg.connect(**dsn(port))


async def database_dropped() -> None:
    async with server(("57P04", 'database "railyard" does not exist any more')) as port:
        await asyncpg.connect(**dsn(port))


async def tls_asked(answer: bytes) -> None:
    """asyncpg asking for TLS (`ssl: require`) a server that answers the SSLRequest with `answer`: b"N" (no TLS
    here: asyncpg's ConnectionError "rejected SSL upgrade"), or b"S" and then no TLS (the handshake's ssl.SSLError,
    wrong version number, as a port of something else gives). Settings: asked again, the same."""
    talking: list[tuple[asyncio.Task, asyncio.StreamWriter]] = []

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        talking.append((asyncio.current_task(), writer))
        await reader.readexactly(8)  # the SSLRequest
        writer.write(answer)
        await writer.drain()
        if answer == b"S":
            await reader.read(1)  # the ClientHello
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 8)
            await writer.drain()
        await reader.read()

    listening = await asyncio.start_server(talk, "127.0.0.1", 0)
    try:
        await asyncpg.connect(**{**dsn(listening.sockets[0].getsockname()[1]), "ssl": "require"})
    finally:
        listening.close()
        for _, writer in talking:
            writer.close()  # as server()'s: its task ends here
        await asyncio.gather(*(task for task, _ in talking), return_exceptions=True)


async def tls_not_spoken() -> None:
    await tls_asked(b"S")


async def tls_refused() -> None:
    await tls_asked(b"N")


@pytest.mark.parametrize("fails", [
    # the server could not read the client: a bug (asyncpg's, ours) or a proxy speaking another protocol; asked again,
    # the same. Was a 503 (class 08)
    protocol_violation,
    # the database is gone: no moment brings it back. Was a 503 (class 57)
    database_dropped,
    # a statement over the role's statement_timeout (or an operator's pg_cancel_backend): the same statement fails
    # again; our own bound (the pool's command_timeout) is asyncpg's TimeoutError, still a 503. Was a 503 (class 57)
    raising(asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")),
    # a limit the server is configured with: it stays. Was a 503 (class 53)
    raising(asyncpg.exceptions.ConfigurationLimitExceededError("too many range table entries")),
    # TLS the server does not speak or does not take (or a certificate that does not verify): a setting, a 503 for
    # ever before
    tls_not_spoken, tls_refused,
], ids=lambda fails: fails.__name__)
async def test_a_refusal_asked_again_in_vain_is_a_500_not_ask_again(fails, caplog):
    with caplog.at_level(logging.WARNING, "railyard.bus"):
        reply = await answer(fails)
    assert (reply.status, reply.error.code, reply.error.msg) == (500, "internal", "internal error"), reply.error.msg
    assert [r.levelname for r in caplog.records] == ["ERROR"] and caplog.records[0].exc_info


@pytest.mark.parametrize("exc", [asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
                                 asyncpg.exceptions.SerializationError("could not serialize access due to concurrent "
                                                                       "update")],
                         ids=lambda exc: type(exc).__name__)
async def test_a_transaction_rolled_back_for_a_concurrent_one_is_a_503_ask_again(exc, caplog):
    """PostgreSQL rolled the whole transaction back (40P01, 40001): asked again, it runs anew. Was a 500 'internal
    error', which tells a client not to retry what would pass."""
    with caplog.at_level(logging.WARNING, "railyard.bus"):
        reply = await answer(raising(exc))
    assert (reply.status, reply.error.code) == (503, "unavailable"), reply.error.msg
    assert reply.error.msg == (f"registry's database rolled the command's transaction back for a concurrent one "
                               f"({type(exc).__name__}): nothing of that transaction was kept; ask again")
    assert scheduler.passing(error_from_body(reply.error, reply.status))
    assert [r.levelname for r in caplog.records] == ["WARNING"] and not caplog.records[0].exc_info
    # the WARNING says what happened: the database answered (before: "503, the database did not answer", an outage
    # to look for that was not one)
    assert caplog.records[0].getMessage() == (f"{SUBJECT}: 503, the database rolled the command's transaction back "
                                              f"for a concurrent one: {exc!r}"), caplog.records[0].getMessage()


async def caught(fails: Callable[[], Awaitable[object]]) -> BaseException:
    try:
        await fails()
    except Exception as exc:
        return exc
    raise AssertionError("did not fail")


async def asyncpg_outage(kind: str) -> BaseException:
    """A real OSError out of asyncpg's code, for a fake pool to raise (the traceback it keeps says asyncpg raised
    it, as shared.data_errors asks): "refused" (nothing listens on the port) or "timed_out" (the server never
    answers the start-up)."""
    return await caught({"refused": refused_connection, "timed_out": connect_timed_out}[kind])


async def test_the_predicates_an_except_clause_or_a_retry_asks():
    """is_database_unavailable / database_retryable: what the deployer, auth's verifier and the task scheduler ask
    in place of their own tuples, which took any OSError (object storage's, a file's) and any InterfaceError (a
    misuse: a bug) for the database being down."""
    from shared.data_errors import database_retryable, is_database_unavailable, is_transaction_conflict

    refused = await caught(refused_connection)
    assert isinstance(refused, OSError) and is_database_unavailable(refused) and database_retryable(refused)
    for other in (ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 9000)"), FileNotFoundError(2, "x"),
                  asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress"),
                  await caught(protocol_violation), await caught(tls_not_spoken), await caught(tls_refused)):
        assert not is_database_unavailable(other) and not database_retryable(other), repr(other)
    deadlock = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    assert is_transaction_conflict(deadlock) and database_retryable(deadlock) and not is_database_unavailable(deadlock)


class Connection:
    """The log store's NATS connection, as _raw_responder uses it: what it publishes."""

    max_payload = 1024**2

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict]] = []

    async def publish(self, subject: str, body: bytes, headers: dict) -> None:
        self.published.append((subject, body, headers))


@pytest.mark.parametrize(("fails", "status"), [
    (refused_connection, 503), (raising(KeyError("pipeline")), 500),
    (raising(asyncpg.exceptions.DeadlockDetectedError("deadlock detected")), 503)], ids=["refused", "ours", "deadlock"])
async def test_the_log_stores_raw_replies_answer_the_same(fails, status, caplog):
    """The log store's raw Arrow replies (pipelines/get_logs, log fields: services/log_store/app.py _raw_responder)
    are not run_command's: a query its database could not answer was a 500 there too."""
    from services.log_store.app import _raw_responder
    from shared.raw_bus import ERROR_HEADER

    async def work(msg, token):
        await fails()

    nc = Connection()
    message = type("Message", (), {"subject": "log_store.logs.query", "reply": "_INBOX.caller.1", "headers": {},
                                   "data": b"{}"})()
    with caplog.at_level(logging.WARNING):
        await _raw_responder(nc, work, "ask for less")(message)
    ((subject, body, headers),) = nc.published
    error = orjson.loads(headers[ERROR_HEADER])
    assert (subject, body, error["status"]) == ("_INBOX.caller.1", b"", status), error  # before: 500 for both
    if status == 503 and fails is not refused_connection:  # a deadlock: the transaction rolled back, ask again
        assert error["code"] == "unavailable" and error["msg"].startswith(
            "log_store's database rolled the command's transaction back for a concurrent one ("), error
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            "log_store.logs.query: 503, the database rolled the command's transaction back for a concurrent one: "
            "DeadlockDetectedError('deadlock detected')"]  # before: "503, the database did not answer"
        assert not any(r.exc_info for r in caplog.records)
    elif status == 503:
        assert error["code"] == "unavailable" and error["msg"].startswith("log_store's database did not answer (")
        assert not any(r.exc_info for r in caplog.records)
        assert any(r.getMessage().endswith(" in refused_connection)") for r in caplog.records)  # the line that asked
        assert any(r.getMessage().startswith("log_store.logs.query: 503, the database did not answer: ")
                   for r in caplog.records)
    else:
        assert (error["code"], error["msg"]) == ("internal", "internal error")
        assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)
