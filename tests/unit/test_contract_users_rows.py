"""users/query's rows have the shape of seed 001's (its "Get all users" answer, Keycloak's representation): a user
without an email (the first admin, `'username': 'admin'`) has no `email` key, and `firstName`/`lastName`, which
Railyard never stores, are left out, not null. Before, every row carried `"email": null` (the admin's),
`"firstName": null` and `"lastName": null`, so a script testing `'email' in row` took the admin for a user with an
email (the contract journey j2 of session 27). Both ways the reply is made: auth's bytes (handlers.users_answer) and
a model's (UserRecord, as the gateway's validating path dumps it)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import orjson

from services.auth import handlers
from shared.authz import Principal
from shared.messages.auth import Users

ADMIN = Principal(subject=str(uuid.UUID(int=9)), kind="user", admin=True, client_id="c", username="admin",
                  issued_at=0.0)
ROWS = [{"id": uuid.UUID(int=1), "username": "admin", "email": None, "enabled": True, "temporary_password": False,
         "created_at": datetime(2026, 12, 5, tzinfo=UTC)},
        {"id": uuid.UUID(int=2), "username": "ann@example.com", "email": "ann@example.com", "enabled": True,
         "temporary_password": False, "created_at": datetime(2026, 12, 5, 1, tzinfo=UTC)}]


def test_absent_attributes_are_left_out_of_the_encoded_rows():
    users = orjson.loads(bytes(asyncio.run(handlers.users_answer(ROWS, None, ADMIN))))["users"]
    admin, ann = users[str(ROWS[0]["id"])], users[str(ROWS[1]["id"])]
    assert "email" not in admin and "firstName" not in admin and "lastName" not in admin, admin
    assert admin["username"] == "admin" and admin["emailVerified"] is False  # the seed's admin row otherwise
    assert ann["email"] == "ann@example.com" and "firstName" not in ann and "lastName" not in ann, ann
    assert None not in admin.values() and None not in ann.values()


def test_a_model_made_row_leaves_them_out_too():
    """The gateway's validating path (and any reply a UserRecord makes) dumps the model: the same keys."""
    records = [handlers._user_record(row, ADMIN) for row in ROWS]
    dumped = Users(users={r.id: r for r in records}).model_dump(mode="json")["users"]
    assert set(dumped[str(ROWS[0]["id"])]) == set(orjson.loads(handlers._user_json(ROWS[0], True)))
    assert "email" not in dumped[str(ROWS[0]["id"])] and dumped[str(ROWS[1]["id"])]["email"] == "ann@example.com"
    assert not {"firstName", "lastName"} & set(dumped[str(ROWS[1]["id"])])
    # read back, the absent ones are None: what a reader of the model sees is unchanged
    assert Users.model_validate({"users": dumped}).users[str(ROWS[0]["id"])].email is None
