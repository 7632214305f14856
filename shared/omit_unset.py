"""Optional fields added to a bus message after its first release, left out of what is sent while they are unset.

Every message refuses unknown fields (shared/messages/base.py Message: `extra="forbid"`, and shared/errors.py
ErrorBody), so a field a newer service sends is one an older reader cannot read: during a rolling update a gateway
(monitoring, lineage) older than a deployer's route field read no route at all (every inference 503 'deployer
answered with a reply that could not be read'). A field that is left out while unset keeps the message's bytes
what they were before the field, for every reader; only a message that sets it needs readers that know it.

Used by the messages through `shared.messages.base.omit_when_unset` (re-exported there), and directly by
shared/paging.py's NextCursor (every paged list's next_cursor). It lives here, outside the
shared.messages package, because shared/errors.py's ErrorBody uses it too: importing any module of shared.messages
imports shared.messages.base, which imports shared.errors (Reply carries an ErrorBody), so shared.errors cannot
import from the package while its classes are being made."""

from __future__ import annotations

from typing import Any

from pydantic import model_serializer


def omit_when_unset(*fields: str, decided_by: str | None = None) -> Any:
    """A wrap model serializer (assign it to a name in the class body) leaving each of `fields` out of the
    serialized message when it is None. `decided_by`: one field decides for all of `fields`: they are all left out
    when it is None (fields that are set together, like a cut list's cursor and count), else all kept.

        class DeploymentRoute(Message):
            reason: str | None = None
            _omit_unset = omit_when_unset("reason")

    The serializer has no return annotation on purpose: pydantic would take it for the message's serialization
    schema (a list answer's OpenAPI schema was then any object, with no fields)."""
    if not fields:
        raise ValueError("omit_when_unset needs the fields it leaves out")
    names = tuple(fields)

    def _omit_unset(self: Any, handler: Any):  # no return type: see above
        data = handler(self)
        if decided_by is not None:
            if data.get(decided_by) is None:
                for name in names:
                    data.pop(name, None)
            return data
        for name in names:
            if data.get(name, 0) is None:  # absent (an `include` left it out): nothing to leave out
                del data[name]
        return data

    return model_serializer(mode="wrap")(_omit_unset)
