"""The bus conventions a process needs when it talks to NATS with nats-py alone, without FastStream (an engine
replica, `railyard dead-letters`): its identity's connect options, the header that carries a raw reply's typed error
and the server's publish refusals (PublishRefusals). Kept apart from shared.bus (which re-exports them) so that such
a process does not import FastStream (~9 MiB it never uses)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from shared.errors import RailyardError, Unavailable

_T = TypeVar("_T")

ERROR_HEADER = "Railyard-Error"
REPLY_INBOXES = "_INBOX."
"""Where every caller's replies arrive: each identity's inbox prefix is `_INBOX.<identity>`
(shared/bus_identities.py), the prefix nats-py and FastStream use without identities is `_INBOX`."""
REFUSED_LOG_EVERY = 60.0
"""Seconds between two warnings about requests on one subject whose reply subject is not an inbox."""
_refused_logged: dict[str, tuple[float, int]] = {}


def error_headers(exc: RailyardError) -> dict[str, str]:
    """The header a raw reply carries instead of a body when the request failed."""
    return {ERROR_HEADER: json.dumps({"code": exc.code, "msg": exc.msg, "status": exc.status})}


def connect_options(nats_settings: Any) -> dict[str, Any]:
    """Credentials and reply inbox of this process's bus identity, for `nats.connect(url, **options)`: replies
    come back under `_INBOX.<identity>.`, where no other identity may subscribe."""
    if not nats_settings.user:
        return {}
    from shared.bus_identities import inbox_prefix

    return {"user": nats_settings.user, "password": nats_settings.password,
            "inbox_prefix": inbox_prefix(nats_settings.user)}


def answers_elsewhere(reply_subject: str | None) -> bool:
    """Whether a request names a reply subject that is not a caller's inbox (`events.model.x`, `logs.inference.x`):
    then it must not be run and nothing published. A service may publish on every identity's inbox and on its own
    subjects (its events, the commands it calls), so the bus lets its answer out on any of those a request names;
    anyone who may send it one command (the `client` identity) would have it publish there (an error reply in
    EVENTS, which its consumers dead-letter, or a flood filling the stream). No reply subject at all is not
    elsewhere: nothing is answered (a plain publish; FastStream's in-memory test broker sends requests so)."""
    return bool(reply_subject) and not reply_subject.startswith(REPLY_INBOXES)  # type: ignore[union-attr]


def log_refused_reply(logger: logging.Logger, subject: str, reply_subject: str) -> None:
    """A WARNING that a request on `subject` was refused for its reply subject (`answers_elsewhere`): at most one
    per subject every REFUSED_LOG_EVERY seconds, with how many were not logged since, so a caller sending many
    cannot flood the log (the subjects are this process's own subscriptions: a bounded table)."""
    now = time.monotonic()
    last, skipped = _refused_logged.get(subject, (float("-inf"), 0))
    if now - last < REFUSED_LOG_EVERY:
        _refused_logged[subject] = (last, skipped + 1)
        return
    _refused_logged[subject] = (now, 0)
    logger.warning("a request on %s named the reply subject %r, not a caller's inbox (under %s): not run, nothing "
                   "answered%s", subject, reply_subject[:200], REPLY_INBOXES,
                   f" ({skipped} more such requests on it since the last warning)" if skipped else "")



_REFUSED = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)
"""A server's permissions violation for a publish, as a connection's error callback gets it. nats-py's parser
lowercases the whole -ERR line, the subject in it too ("$js.api.consumer.info.events.x" for a publish to
"$JS.API.CONSUMER.INFO.EVENTS.x"): subjects are matched regardless of case."""


class PublishRefused(Unavailable):
    """The bus refused this process's publish to a subject (a permissions violation): nobody can be asked there.
    `violation`: the server's error as the connection's error callback got it."""

    def __init__(self, msg: str = "the bus refused the publish", *, violation: BaseException | None = None,
                 code: str | None = None) -> None:
        super().__init__(msg, code=code)
        self.violation = violation


class PublishRefusals:
    """The permissions violations the server sent a connection for its publishes, fed by the connection's error
    callback (`note`): shared.bus.make_broker's for a service, `railyard dead-letters`' own (shared/dead_letters.py).
    The server drops a message its sender may not publish and answers nothing, so a request to such a subject only
    ends at its timeout (a 504 that looks like a slow service), while the violation arrives at once as an async -ERR.
    `unless_refused` ends a call when a violation naming its subject arrives while it waits (one that came before
    the call is not the call's); `refused_within` says whether one did lately."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[BaseException]]] = {}
        self._last: dict[str, float] = {}

    def note(self, exc: BaseException) -> None:
        """One error the server sent: a publish's permissions violation is kept, any other is not this one's."""
        found = _REFUSED.search(str(exc))
        if found is None:
            return
        subject = found.group(1).lower()
        self._last[subject] = time.monotonic()
        for waiter in self._waiting.get(subject, ()):
            if not waiter.done():
                waiter.set_result(exc)

    def refused_within(self, subject: str, seconds: float) -> bool:
        last = self._last.get(subject.lower())
        return last is not None and time.monotonic() - last < seconds

    async def unless_refused(self, call: Awaitable[_T], subject: str) -> _T:
        """`call`'s answer (or its own error), or PublishRefused, its `violation` the server's error, as soon as a
        violation for publishing to `subject` arrives while it waits; `call` is cancelled then."""
        key = subject.lower()
        waiter: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, set()).add(waiter)
        answer = asyncio.ensure_future(call)
        try:
            await asyncio.wait([answer, waiter], return_when=asyncio.FIRST_COMPLETED)
            if answer.done():
                return answer.result()
            violation = waiter.result()
            raise PublishRefused(f"{subject.split('.')[0]} cannot be asked on {subject}: the bus refused it to this "
                                 f"service ({violation})", violation=violation)
        finally:
            answer.cancel()
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiting[key]
