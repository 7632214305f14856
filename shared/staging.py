"""Staged uploads bound to their uploader: bytes put in object storage by one party (the gateway for a multipart
upload, the monitoring service for a file it writes on a user's behalf) and consumed by the service a command
names them to, which keeps them under their sha256 and deletes the staged copy.

A staged key is `staging/<uploader's user id>/<uuid>`. The consumer takes it only from that user's command
(`check_staged`): anyone else who learns the key gets 403 and neither reads nor deletes the object, so a command
that fails its other checks (membership, the bytes) deletes only the caller's own upload. The same shape as the
monitoring service's staged images (shared/messages/monitoring_predictions.py, STAGED_IMAGE_KEY)."""

from __future__ import annotations

import re
import uuid

from shared.authz import Principal
from shared.errors import Forbidden, InvalidRequest

STAGING_PREFIX = "staging/"
STAGED_KEY = re.compile(r"^staging/(?P<owner>[A-Za-z0-9_.@:-]{1,100})/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                        r"[0-9a-f]{4}-[0-9a-f]{12}$")


def staged_key(user_id: str) -> str:
    """A fresh key to stage one upload of this user under."""
    return f"{STAGING_PREFIX}{user_id}/{uuid.uuid4()}"


def check_staged(key: str, principal: Principal) -> None:
    """May this caller consume the staged upload at `key`? InvalidRequest for a key the stager did not make,
    Forbidden for another user's upload (which the caller must then neither read nor delete)."""
    match = STAGED_KEY.match(key)
    if match is None:
        raise InvalidRequest("staged_key must name an upload staged by the HTTP API (upload the file through it)")
    if match["owner"] != principal.user_id:
        raise Forbidden("the staged upload was made by another user")
