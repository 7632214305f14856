"""Sealed replies: a bus reply to an outside caller is readable by that caller only.

Outside callers share one bus identity, `client` (deploy/nats-permissions.json), so every one of them may subscribe to
`_INBOX.client.>` and would read every reply sent to any other: NATS permissions cannot tell one connection's inbox
from another's. So a caller sends a fresh random key with each request, in the `Railyard-Reply-Key` header (base64url
of 32 bytes); no other `client` connection sees the request (they may not subscribe to command subjects, only the
owning service does). The service seals its whole reply with it, body and headers (the typed error of
`Railyard-Error`, a log page's cursor), with AES-256-GCM, a random 96-bit nonce and the reply subject as associated
data; the reply travels as `Railyard-Sealed: 1.<nonce>` and the ciphertext. Anyone else on `_INBOX.client.>` sees
ciphertext only; a reply altered on the way, or moved to another inbox, does not open.

Enforced: a request whose reply subject is under `_INBOX.client.` without a key is refused at once, unsealed (400
`reply_key_required`; a key that is not base64url of 32 bytes: 400 `bad_reply_key`), before its handler runs, so the
command has no effect. Those two are the only replies sent unsealed to a request that goes to the shared inbox, and
only when there is no key to seal with; every other refusal is sealed like an answer. So a caller that sent a valid
key (`sealed_request` always does) accepts sealed replies only: an unsealed one, refusal or not, is not the service's
answer to it (every service may publish into `_INBOX.>` and could forge one) and is `UnsealedReply`. Services and
the gateway reply to their own inboxes, which no other identity may read: they send no key and pay nothing. A
request with a key is sealed whatever its inbox.

One implementation for every handler a `client` may reach: `shared.bus.command` (the typed commands) and the log
store's raw query (services/log_store/app.py) use `reply_key` and `seal_reply`; callers use `sealed_request`.
No FastStream here: engine-side processes import this module without it; `cryptography` (~6 MiB) is imported with
the first reply sealed or opened, not at start (docs/performance.md: services load it when they first need it)."""

from __future__ import annotations

import base64
import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.bus_identities import CLIENT, inbox_prefix
from shared.errors import InvalidRequest, RailyardError

REPLY_KEY_HEADER = "Railyard-Reply-Key"
SEALED_HEADER = "Railyard-Sealed"
KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = "1"
SHARED_INBOX = inbox_prefix(CLIENT) + "."
"""Replies under this prefix can be read by every `client` connection: they must be sealed."""
_AD = b"railyard sealed reply v1\n"
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}=?")
_HEAD = struct.Struct(">I")
HOW = (f"send a fresh random {KEY_BYTES}-byte key, base64url-encoded, in the {REPLY_KEY_HEADER} header of each "
       "request and open the sealed reply with it (shared.sealed.sealed_request does both; docs/auth.md, Bus callers)")


class ReplyKeyRequired(InvalidRequest):
    code = "reply_key_required"


class BadReplyKey(InvalidRequest):
    code = "bad_reply_key"


class UnsealError(RailyardError):
    """A sealed reply that does not open with the caller's key (altered, or not for this inbox)."""

    status = 502
    code = "bad_sealed_reply"


class UnsealedReply(UnsealError):
    """A reply to a request that sent a valid key which arrives unsealed, an ok answer or a refusal: no service
    answers such a request in the clear (the key refusals are for requests without a valid key), so it came from a
    service that does not seal (an older version) or from another identity that may publish into callers' inboxes
    (every service may publish to `_INBOX.>`). Nothing of it is read or passed on."""

    code = "unsealed_reply"


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    return value if value is not None else headers.get(name.lower())


def reply_key(headers: Mapping[str, str] | None, reply_subject: str | None) -> bytes | None:
    """The key a request's reply must be sealed with; None when it needs none (no key sent, and the reply goes to a
    service's own inbox, or nowhere). ReplyKeyRequired (400) when the reply goes to the shared `client` inbox without
    a key, BadReplyKey (400) when the key is not base64url of 32 bytes: the request must then be answered with that
    refusal (unsealed: there is no key) and nothing else done. Reads only the headers and the reply subject."""
    raw = _header(headers, REPLY_KEY_HEADER)
    if raw is None:
        if reply_subject and reply_subject.startswith(SHARED_INBOX):
            raise ReplyKeyRequired(f"a reply to {SHARED_INBOX[:-1]} is readable by every caller of that identity: "
                                   f"{HOW}")
        return None
    raw = raw.strip()
    if not _KEY_TEXT.fullmatch(raw):
        raise BadReplyKey(f"{REPLY_KEY_HEADER} must be {KEY_BYTES} random bytes, base64url-encoded (43 characters, "
                          f"'=' padding optional): {HOW}")
    return base64.urlsafe_b64decode(raw.rstrip("=") + "=")


def _ad(reply_subject: str) -> bytes:
    return _AD + reply_subject.encode()


def seal(key: bytes, reply_subject: str, body: bytes,
         headers: Mapping[str, str] | None) -> tuple[bytes, dict[str, str]]:
    """The sealed reply (ciphertext body, marker header) of `body` and `headers` for `reply_subject`."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    head = json.dumps(dict(headers or {}), separators=(",", ":")).encode()
    sealed = AESGCM(key).encrypt(nonce, b"".join((_HEAD.pack(len(head)), head, body)), _ad(reply_subject))
    return sealed, {SEALED_HEADER: f"{VERSION}.{encode_key(nonce)}"}


def seal_reply(key: bytes | None, reply_subject: str | None, body: bytes,
               headers: Mapping[str, str] | None) -> tuple[bytes, dict[str, str] | None]:
    """A handler's reply as it goes out: sealed when the request sent a key (`reply_key`), else as it is."""
    if key is None or not reply_subject:
        return body, (dict(headers) if headers else None)
    return seal(key, reply_subject, body, headers)


def is_sealed(headers: Mapping[str, str] | None) -> bool:
    return _header(headers, SEALED_HEADER) is not None


def unseal(key: bytes, reply_subject: str, body: bytes,
           headers: Mapping[str, str] | None) -> tuple[bytes, dict[str, str]]:
    """The body and headers a sealed reply carries; UnsealError when it does not open with `key` for
    `reply_subject` (altered on the way, sealed for another inbox or with another key) or is not a sealed reply."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    marker = _header(headers, SEALED_HEADER) or ""
    version, _, nonce_text = marker.partition(".")
    try:
        if version != VERSION:
            raise ValueError(f"version {version!r}")
        nonce = base64.urlsafe_b64decode(nonce_text + "=" * (-len(nonce_text) % 4))
        if len(nonce) != NONCE_BYTES:
            raise ValueError("nonce")
        plain = AESGCM(key).decrypt(nonce, bytes(body), _ad(reply_subject))
        (size,) = _HEAD.unpack_from(plain)
        out = json.loads(plain[_HEAD.size:_HEAD.size + size])
        if not isinstance(out, dict):
            raise ValueError("headers")
        return plain[_HEAD.size + size:], {str(k): str(v) for k, v in out.items()}
    except (InvalidTag, ValueError, struct.error) as exc:
        raise UnsealError(f"a sealed reply on {reply_subject} did not open ({type(exc).__name__}): it was altered "
                          "or is not for this request") from None


@dataclass
class OpenedReply:
    """A reply as `sealed_request` returns it: what the service sent, opened (the shape of a nats-py Msg's
    subject, data and headers)."""

    subject: str
    data: bytes
    headers: dict[str, str] | None = field(default=None)


async def sealed_request(nc: Any, subject: str, data: bytes = b"", *, headers: Mapping[str, str] | None = None,
                         timeout: float = 5.0) -> OpenedReply:
    """`nc.request` for a caller on a shared inbox (the `client` identity): sends a fresh key with the request and
    returns the reply opened, refusals included (a `Reply` with `ok: false`, or the `Railyard-Error` header of a
    raw reply). nats-py's errors as `nc.request` raises them (NoRespondersError, TimeoutError); UnsealError when the
    reply does not open, UnsealedReply (502 `unsealed_reply`) when it arrives unsealed, whatever it says: the key
    sent is always valid, so the only replies a service sends unsealed (`reply_key_required`, `bad_reply_key`) are
    never the answer to it, and an unsealed refusal is one that any service could have forged (every service may
    publish into `_INBOX.>`) or one of a service that does not seal; it is not passed on."""
    key = new_key()
    sent = {**(headers or {}), REPLY_KEY_HEADER: encode_key(key)}
    reply = await nc.request(subject, data, timeout=timeout, headers=sent)
    if not is_sealed(reply.headers):
        raise UnsealedReply(f"the reply to {subject} arrived unsealed although the request sent a valid "
                            f"{REPLY_KEY_HEADER}: it is not {subject.split('.')[0]}'s sealed answer (a service that "
                            "does not seal, or a reply forged into this inbox), so it was not read")
    body, out = unseal(key, reply.subject, reply.data, reply.headers)
    return OpenedReply(reply.subject, body, out or None)
