"""Which database refusals are the caller's input, and which are our own bugs.

PostgreSQL's class 22 ("data exception") covers both: a value of the request too big for its column (an
`integer` id given 3e9, a `varchar(64)` given 100 characters) and a fault in our own SQL (a division by zero, an
arithmetic overflow on values that were each fine, a cast of a constant). The bus answers the first with a 400
naming the field and the second with a 500, logged with its traceback (docs/architecture.md, "Commands,
replies and errors").

The rule is narrow on purpose: a refusal is the caller's only when it is one of the kinds a value can cause by
itself (a number beyond the column's type, a text longer than its column, a text asyncpg cannot encode as the
parameter's type, such as `abc` for a uuid) AND a field of the command holds the very value refused. asyncpg's own
refusal of a parameter prints the value (`invalid input for query argument $2: 50000000000 (value out of int32
range)`), so a number is blamed on a field only when the field holds that number: a value our code computed from a
field (`count * 10**10`) is ours even when another field (`start_ms: 1733000000000`) is beyond an integer too.
PostgreSQL's own "integer out of range" carries no value (an overflow of its arithmetic or of a cast in our SQL):
ours, always; the commands bound the fields that land in `integer` columns, so such a value is a 400 before any SQL.
PostgreSQL's "value too long for type character varying(n)" names neither the value nor the column: a field is
named only when it is the one text of the command longer than n; with several, the 400 says the database did not
say which and lists them, blaming none (the first one used to be blamed).
Anything else of the class, or a refusal no field of the command explains, is ours.

A database that cannot answer now is neither (`database_unavailable`): a PostgreSQL restarting, failing over or out
of connections is a 503 `unavailable`, ask again in a moment, not a 500 that tells a client "a bug, do not retry".
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from pydantic import BaseModel

from shared.errors import InvalidRequest, Unavailable

# asyncpg refusing to encode a parameter (no SQLSTATE from the server: a bare DataError carrying the codec's error)
_CLIENT_RANGE = re.compile(r"^invalid input for query argument \$\d+(?: in element #\d+ of executemany\(\) sequence)?: "
                           r"(.*) \(value out of (int16|int32|float32) range\)$", re.S)
_CLIENT_REFUSAL = re.compile(r"^invalid input for query argument \$\d+"
                             r"(?: in element #\d+ of executemany\(\) sequence)?: (.*)$", re.S)
# PostgreSQL's own out-of-range (22003) message when it reads a text as a number (a cast of a text parameter); its
# "integer out of range" carries no value and is never the caller's
_SERVER_RANGE = re.compile(r'^value "(.*)" is out of range for type (smallint|integer)$', re.S)
_TOO_LONG = re.compile(r"^value too long for type (?:character varying|character|bit varying|bit)\((\d+)\)$")

_INT_RANGES = {"int16": (-(2**15), 2**15 - 1), "smallint": (-(2**15), 2**15 - 1),
               "int32": (-(2**31), 2**31 - 1), "integer": (-(2**31), 2**31 - 1)}
_FLOAT32_MAX = 3.4028234663852886e38


def is_data_error(exc: BaseException) -> bool:
    """Whether `exc` is PostgreSQL's class 22 'data exception' (or asyncpg's refusal to encode a parameter); asyncpg
    is only looked up when the process loaded it (the gateway never does)."""
    asyncpg = sys.modules.get("asyncpg")
    return asyncpg is not None and isinstance(exc, asyncpg.exceptions.DataError)


def refused_request_value(exc: BaseException, cmd: BaseModel | None) -> InvalidRequest | None:
    """The 400 to answer when the data error `exc` was caused by a value of the command `cmd`, naming its field;
    None when it was not (then it is a fault of ours: a 500)."""
    if cmd is None or not is_data_error(exc):
        return None
    message = str(exc).strip()
    sqlstate = getattr(exc, "sqlstate", None)
    kind: str | None = None
    shown, printed = "", str  # the refused value as the message prints it, and how it prints a field's value
    if sqlstate == "22000" and (match := _CLIENT_RANGE.match(message)):  # asyncpg's client-side encoding refusal
        shown, kind, printed = match.group(1), match.group(2), _asyncpg_repr
    elif sqlstate == "22003" and (match := _SERVER_RANGE.match(message)):
        shown, kind = match.group(1), match.group(2)
    if kind == "float32":
        found = _first_field(cmd, lambda v: isinstance(v, float) and math.isfinite(v) and abs(v) > _FLOAT32_MAX
                             and printed(v) == shown)
        if found:
            return InvalidRequest(f"{found[0]}: {found[1]!r} is out of range here: at most {_FLOAT32_MAX:g} in size")
        return None
    if kind is not None:
        low, high = _INT_RANGES[kind]
        found = _first_field(cmd, lambda v: isinstance(v, int | str) and not isinstance(v, bool)
                             and printed(v) == shown and not low <= _as_int(v) <= high)
        if found:
            return InvalidRequest(f"{found[0]}: {found[1]} is out of range here: must be between {low} and {high}")
        return None
    if sqlstate == "22001" and (match := _TOO_LONG.match(message)):
        return _too_long(cmd, int(match.group(1)))
    cause = exc.__cause__
    if sqlstate == "22000" and isinstance(cause, ValueError) and (match := _CLIENT_REFUSAL.match(message)):
        # asyncpg's codec refused a text for a typed parameter (`invalid UUID 'abc': ...`): the caller's when the
        # text is, as asyncpg prints it, one a text field of the command holds. A TypeError (a value of the wrong
        # type: fields are typed, so our code passed it) never is.
        reason = str(cause)
        shown = match.group(1).removesuffix(f" ({reason})")
        found = _first_field(cmd, lambda v: isinstance(v, str) and _asyncpg_repr(v) == shown)
        if found and shown != match.group(1):
            return InvalidRequest(f"{found[0]}: {reason}")
    return None


def _too_long(cmd: BaseModel, limit: int) -> InvalidRequest | None:
    """PostgreSQL's "value too long for type character varying(n)" names neither the value nor the column, so the
    field is known only when it is the one text of the command longer than n; with several, the answer says so
    and lists them as the candidates, blaming none of them; with none, the text was ours."""
    longer = list(_fields_where(cmd, lambda v: isinstance(v, str) and len(v) > limit))
    if not longer:
        return None
    if len(longer) == 1:
        path, value = longer[0]
        return InvalidRequest(f"{path}: too long ({len(value)} characters): at most {limit} here")
    listed = ", ".join(f"{path} ({len(value)} characters)" for path, value in longer[:_MOST_LISTED])
    more = f" and {len(longer) - _MOST_LISTED} more" if len(longer) > _MOST_LISTED else ""
    return InvalidRequest(f"a text of this request is longer than the {limit} characters allowed where it is stored; "
                          f"the database does not say which, and {len(longer)} fields are longer than that: "
                          f"{listed}{more}")


_MOST_LISTED = 5


def _as_int(value: int | str) -> int:
    """A field's number (a text PostgreSQL read as one was printed as it is: digits, perhaps signed)."""
    try:
        return int(value)
    except ValueError:
        return 0


def _asyncpg_repr(value: Any) -> str:
    """A parameter as asyncpg's refusal shows it (prepared_stmt.pyx: repr, cut after 40 characters)."""
    shown = repr(value)
    return shown[:40] + "..." if len(shown) > 40 else shown


def _first_field(cmd: BaseModel, fits: Any) -> tuple[str, Any] | None:
    """The dotted path and value of the first value in `cmd` (its fields, nested models, lists and dict values)
    for which `fits(value)` is true."""
    return next(_fields_where(cmd, fits), None)


def _fields_where(cmd: BaseModel, fits: Any) -> Iterator[tuple[str, Any]]:
    """The dotted path and value of every value in `cmd` (its fields, nested models, lists and dict values) for
    which `fits(value)` is true (not looked into further). Iterative, in field order."""
    pending: list[tuple[str, Any]] = _fields(cmd, "")[::-1]
    while pending:
        path, value = pending.pop()
        if fits(value):
            yield path, value
            continue
        if isinstance(value, BaseModel):
            children = _fields(value, f"{path}.")
        elif isinstance(value, dict):
            children = [(f"{path}.{k}", v) for k, v in value.items()]
        elif isinstance(value, list | tuple):
            children = [(f"{path}.{i}", v) for i, v in enumerate(value)]
        else:
            continue
        pending.extend(children[::-1])
    return None


def _fields(model: BaseModel, prefix: str) -> list[tuple[str, Any]]:
    """A model's field values, named as the caller spells them (a field's alias when it has one)."""
    fields = type(model).model_fields
    return [(prefix + ((fields[name].alias or name) if name in fields else name), value)
            for name, value in model.__dict__.items()]


# asyncpg's plain InterfaceError that says the connection or pool is gone (the server closed it, the service is
# stopping); its others are a misuse of a connection (a bug: "another operation is in progress"), and its DataError
# subclass a value it cannot encode (refused_request_value), which stay 500s
_GONE = {"connection is closed", "pool is closing", "pool is closed"}
_CAUSES_READ = 5  # errors a `raise ... from` chain is followed through looking for asyncpg's frames
# SQLSTATEs of the classes counted below (08, 53, 57) that are not an outage: asked again, they answer the same
_NOT_OUTAGES = {
    # 08P01 protocol_violation: the server could not read what the client sent (a bug of asyncpg's or ours, a proxy
    # between them that speaks another protocol), not a connection that failed
    "08P01",
    # 57014 query_canceled: the server ran the statement and cancelled it: a statement_timeout of the role or the
    # database (ours sets none: our bound, the pool's command_timeout, is asyncpg's TimeoutError, counted), or an
    # operator's pg_cancel_backend. The same statement over the same setting fails again: a setting or a query too
    # slow, for the operator to see with its traceback, not a client to ask again
    "57014",
    # 57P04 database_dropped: the database is gone; no moment brings it back
    "57P04",
    # 53400 configuration_limit_exceeded: a statement beyond a limit the server is configured with; it stays beyond
    "53400",
}
_TLS_CUT = ("SSLEOFError", "SSLZeroReturnError")  # ssl's errors for a connection cut during or after the handshake
_TLS_REFUSED = "rejected SSL upgrade"  # asyncpg's ConnectionError: TLS required, and the server takes none


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not answer now (database_unavailable's 503), for an except clause's
    filter (`except Exception as exc: if not is_database_unavailable(exc): raise`) or tenacity's
    retry_if_exception: the connection refused, lost or timed out, the server shutting down, starting up or out of
    resources (class 08, 57, 53; not _NOT_OUTAGES), a standby after a failover refusing writes (25006), the pool
    closing, a statement prepared before another process's migration (0A000). An OSError only when asyncpg raised it,
    and not an ssl.SSLError but for a connection cut during TLS (SSLEOFError, SSLZeroReturnError), nor asyncpg's
    "rejected SSL upgrade": a certificate that does not verify, a server that speaks no TLS on the port or takes none
    where TLS is required are settings, which fail again however often asked (they were a 503 for ever).
    53200 (out of memory, out of shared memory) counts: the server's memory and its lock table (max_locks_per_
    transaction for every connection together) are shared by all its sessions, and our statements each lock a few
    tables (no partitioned ones), so it is the load of the moment, not one of our statements. Not a deadlock or a
    serialization failure (is_transaction_conflict): the database answered."""
    asyncpg = sys.modules.get("asyncpg")  # not loaded (shared.bus alone): nothing of it can have been raised
    if asyncpg is None:
        return False
    errors = asyncpg.exceptions
    if isinstance(exc, errors.PostgresConnectionError | errors.OperatorInterventionError
                  | errors.InsufficientResourcesError | errors.ReadOnlySQLTransactionError
                  | errors.InvalidCachedStatementError):
        return getattr(exc, "sqlstate", None) not in _NOT_OUTAGES
    if type(exc) is errors.InterfaceError:
        return str(exc) in _GONE
    if isinstance(exc, OSError):
        if (_is_tls_error(exc) and type(exc).__name__ not in _TLS_CUT) or _TLS_REFUSED in str(exc):
            return False
        return _raised_by_asyncpg(exc)
    return False


def is_transaction_conflict(exc: BaseException) -> bool:
    """Whether `exc` is a deadlock (40P01) or a serialization failure (40001, 40000's class): PostgreSQL rolled the
    transaction back whole because of a concurrent one, the textbook "run the transaction again". Where our code
    knows the transaction may be run again it retries it (the task scheduler's log writes and a run's end:
    database_retryable); elsewhere the command is answered 503, ask again (database_unavailable): it was a 500, which
    tells a client not to retry what would pass."""
    asyncpg = sys.modules.get("asyncpg")
    return asyncpg is not None and isinstance(exc, asyncpg.exceptions.TransactionRollbackError)


def database_retryable(exc: BaseException) -> bool:
    """Whether asking the database again may pass: it could not answer now (is_database_unavailable) or it rolled
    the transaction back for a concurrent one (is_transaction_conflict)."""
    return is_database_unavailable(exc) or is_transaction_conflict(exc)


def database_503_said(exc: BaseException) -> str:
    """What the WARNING logged for database_unavailable's 503 says happened (shared.bus.run_command's and the log
    store's raw replies'): the database did not answer, or, for a deadlock or a serialization failure
    (is_transaction_conflict), that it rolled the command's transaction back for a concurrent one: it answered, and
    'did not answer' (the only wording before, session 40) sent an operator looking for an outage that was not."""
    if is_transaction_conflict(exc):
        return "the database rolled the command's transaction back for a concurrent one"
    return "the database did not answer"


def database_unavailable(exc: BaseException, subject: str) -> Unavailable | None:
    """The 503 to answer when `exc` says the database could not answer now, whatever was asked
    (is_database_unavailable: the connection refused, lost or timed out, the server shutting down, starting up or
    out of resources, a standby after a failover refusing writes (25006), the pool closing, a statement prepared
    before another process's migration changed a table (asyncpg's InvalidCachedStatementError, 0A000: asked again,
    it is prepared anew; inside a transaction asyncpg does not retry it itself, and a token mint answered 500 there
    failed its task run for good since bb143eb3)), or that the transaction was rolled back for a concurrent one (a
    deadlock, a serialization failure: is_transaction_conflict). An OSError (TimeoutError, ConnectionRefusedError, a
    DNS failure) counts only when it came out of asyncpg's code (a frame of it in its traceback or its cause's): one
    from object storage, a file or a URL is not the database's. None otherwise (a unique violation, a syntax error, a
    KeyError, a protocol violation, a role's statement_timeout, a certificate that does not verify: ours or a
    setting, a 500). `subject` names the service (its first part: `registry.models.get`) in the message.
    Before, every such error was unhandled in the handler: shared.bus.run_command's 500 'internal error'."""
    service = subject.partition(".")[0] or "the service"
    if is_transaction_conflict(exc):
        return Unavailable(f"{service}'s database rolled the command's transaction back for a concurrent one "
                           f"({type(exc).__name__}): nothing of that transaction was kept; ask again")
    if not is_database_unavailable(exc):
        return None
    return Unavailable(f"{service}'s database did not answer ({type(exc).__name__}): it may be restarting or busy; "
                       "ask again in a moment")


def _is_tls_error(exc: BaseException) -> bool:
    """Whether `exc` is one of ssl's errors (ssl is looked up only when the process loaded it)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, ssl.SSLError)


def database_call_site(exc: BaseException) -> str:
    """Where our code asked asyncpg for what failed, for the 503's WARNING (logged without a traceback): " (asked at
    services.registry.store:123 in find_model)", the last frame before asyncpg's (asyncio's and contextlib's passed
    over) in the traceback of `exc` or of an error it was raised from; "" when asyncpg's code is in none. A query
    slower than the pool's command_timeout (shared/db.py, 30 s) or than a handler's own asyncio.timeout, and a
    connection our code closed and then used ("connection is closed"), are answered the same 503 as an outage: without
    the line, such a bug logged only "TimeoutError()" where its 500 had logged the traceback."""
    caller = _asyncpg_caller(exc)[1]
    if caller is None:
        return ""
    frame = caller.tb_frame
    return f" (asked at {frame.f_globals.get('__name__')}:{caller.tb_lineno} in {frame.f_code.co_name})"


def _raised_by_asyncpg(exc: BaseException | None) -> bool:
    """Whether asyncpg's code is in the traceback of `exc` or of an error it was raised from (asyncio.timeout's
    TimeoutError is raised from the cancel of what it bounded)."""
    return _asyncpg_caller(exc)[0]


def _asyncpg_caller(exc: BaseException | None) -> tuple[bool, TracebackType | None]:
    """(whether asyncpg's code is in the traceback of `exc` or of an error it was raised from, the traceback entry of
    the frame that called into it there: None when asyncpg's is the first or there is none)."""
    for _ in range(_CAUSES_READ):
        if exc is None:
            break
        trace, caller = exc.__traceback__, None
        while trace is not None:
            module = trace.tb_frame.f_globals.get("__name__") or ""
            if module == "asyncpg" or module.startswith("asyncpg."):
                return True, caller
            if not (module in ("asyncio", "contextlib") or module.startswith("asyncio.")):
                caller = trace
            trace = trace.tb_next
        exc = exc.__cause__
    return False, None
