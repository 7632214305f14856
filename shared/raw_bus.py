"""The bus conventions a process needs when it talks to NATS with nats-py alone, without FastStream (an engine
replica): its identity's connect options and the header that carries a raw reply's typed error. Kept apart from
shared.bus (which re-exports them) so that such a process does not import FastStream (~9 MiB it never uses)."""

from __future__ import annotations

import json
from typing import Any

from shared.errors import RailyardError

ERROR_HEADER = "Railyard-Error"


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
