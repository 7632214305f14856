"""A message written straight to a nats-py connection's socket when nothing waits to be flushed (issue 20).

nats-py's `publish` appends the command to its pending buffer and wakes its flusher task, which writes it on a
later turn of the event loop: on the request path of an inference that turn cost ~70 us of latency (the engine's
reply reached the socket ~70 us after `publish`, bench/bus_hop.py `client=direct`) and some CPU per message.
`write_now` writes the same command (PUB or HPUB, the same header block as nats-py's) at once when the pending
buffer is empty, so the order of messages on the connection is kept; otherwise, and for payloads past
`WRITE_AT_ONCE` (the flusher waits for the socket to drain) or while not connected or draining, it writes nothing
and the caller publishes through nats-py. The gateway's request (services/gateway/bus_request.py) and the engine's
reply (services/engine/replica.py) use it. It reads nats-py 2.x's `_pending_data_size` and `_transport`
(tests/unit/test_nats_direct.py checks what a subscriber receives against nats-py's own publish)."""

from __future__ import annotations

import re
from typing import Any

import nats.errors

WRITE_AT_ONCE = 64 * 1024
_SUBJECT_INVALID = re.compile(r"[ \t\r\n]")  # nats-py's publish check: CRLF would inject protocol commands
_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py's header key check
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def header_block(headers: dict[str, str]) -> bytes:
    """A NATS header block as nats-py's publish writes it (keys checked, values trimmed and stripped of CR/LF)."""
    lines = [b"NATS/1.0\r\n"]
    for k, v in headers.items():
        key = k.strip()
        if not key:
            continue
        if not _HEADER_KEY.fullmatch(key):
            raise nats.errors.BadHeaderError(key)
        lines.append(b"%s: %s\r\n" % (key.encode(), v.strip().translate(_NEWLINES).encode()))
    lines.append(b"\r\n")
    return b"".join(lines)


def check_subject(subject: str) -> None:
    """nats-py's publish check of a subject (BadSubjectError)."""
    if not subject or _SUBJECT_INVALID.search(subject):
        raise nats.errors.BadSubjectError


def write_now(nc: Any, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str = "",
              checked: bool = False) -> bool:
    """Write the message to the connection's socket at once and say True, or write nothing and say False (then
    the caller publishes through nats-py, behind what waits). `checked`: the subject was already checked."""
    if nc._pending_data_size or len(payload) > WRITE_AT_ONCE or not nc.is_connected or nc.is_draining_pubs:
        return False
    if not checked:
        check_subject(subject)
    if len(payload) > nc.max_payload:
        raise nats.errors.MaxPayloadError
    target = b"%s %s" % (subject.encode(), reply.encode()) if reply else subject.encode()
    if headers is not None:  # nats-py writes HPUB for any headers dict, an empty one too
        hdr = header_block(headers)
        command = b"HPUB %s %d %d\r\n%s%s\r\n" % (target, len(hdr), len(hdr) + len(payload), hdr, payload)
    else:
        command = b"PUB %s %d\r\n%s\r\n" % (target, len(payload), payload)
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(payload)
    nc._transport.write(command)
    return True
