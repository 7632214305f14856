"""users/query without limit is refused before it is built when the least its answer takes is above a bus reply
(handlers._refuse_a_whole_answer_too_large, 86498a9): that least, BYTES_PER_USER a user plus the UTF-8 bytes of its
username and email, must never exceed what the answer really takes, or an answer that fits would be refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pydantic_core
import pytest

from services.auth import handlers
from shared.authz import Principal
from shared.bus import reply_ok
from shared.messages.auth import Users
from shared.messages.base import Reply


def viewer(admin: bool) -> Principal:
    return Principal(subject=str(uuid.uuid4()), kind="user", admin=admin, client_id="c", username="v", issued_at=0.0)


ROWS = [
    {"username": "a", "email": None, "enabled": False, "temporary_password": True,
     "created_at": datetime(1960, 1, 1, tzinfo=UTC)},
    {"username": "", "email": "", "enabled": True, "temporary_password": False,
     "created_at": datetime(1970, 1, 1, tzinfo=UTC)},
    {"username": "jürgen@exämple.com", "email": "jürgen@exämple.com", "enabled": True, "temporary_password": False,
     "created_at": datetime(2026, 12, 4, tzinfo=UTC)},
    {"username": 'q"uote\\s\x01', "email": "x" * 254, "enabled": False, "temporary_password": False,
     "created_at": datetime(9999, 12, 31, tzinfo=UTC)},
]


@pytest.mark.parametrize("admin", [True, False])
@pytest.mark.parametrize("count", [1, 2, 50])
@pytest.mark.parametrize("first", range(len(ROWS)))
def test_the_least_an_answer_takes_is_never_above_its_size(admin, count, first):
    rows = [{**ROWS[(first + n) % len(ROWS)], "id": uuid.uuid4()} for n in range(count)]
    records = [handlers._user_record(row, viewer(admin)) for row in rows]
    answer = pydantic_core.to_json(reply_ok(Users(users={r.id: r for r in records})))
    least = count * handlers.BYTES_PER_USER + sum(
        len(row["username"].encode()) + len((row["email"] or "").encode())
        + (handlers.EMAIL_KEY_BYTES if row["email"] is not None else 0) for row in rows)  # as store counts it
    assert least <= len(answer), (least, len(answer))
    assert isinstance(reply_ok(Users(users={})), Reply)


def test_the_least_is_close_for_the_usual_record():
    """Not a bound so loose that nothing is ever refused: within 20 bytes a user of the real size."""
    row = {**ROWS[2], "id": uuid.uuid4()}
    record = handlers._user_record(row, viewer(False))
    one = len(Users(users={record.id: record}).model_dump_json()) - len(Users(users={}).model_dump_json())
    least = handlers.BYTES_PER_USER + handlers.EMAIL_KEY_BYTES + 2 * len(row["email"].encode())
    assert 0 <= one + 1 - least <= 20, (one, least)
