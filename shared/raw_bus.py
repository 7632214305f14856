"""The bus conventions a process needs when it talks to NATS with nats-py alone, without FastStream (an engine
replica): its identity's connect options and the header that carries a raw reply's typed error. Kept apart from
shared.bus (which re-exports them) so that such a process does not import FastStream (~9 MiB it never uses)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from shared.errors import RailyardError

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

