"""The revocation list read in pages (shared.authz.read_revocation_pages): auth answers `auth.revocations.list` one
page at a time under the bus's payload limit (ended task runs grow the list; answered whole, ~70k of them passed the
8 MiB limit and no service could read it). A verifier merges every page and applies the list only once the last was
read: a page that fails fails the read, so a verifier that never read the list refuses tokens (503) and one that had
read it keeps what it had, never a part of the list taken for all of it. A `next` that does not move on ends the
read as a fault, not a loop."""

from __future__ import annotations

import time

import pytest

from shared.authz import Principal, TokenVerifier, read_revocation_pages
from shared.bus import reply_too_large
from shared.errors import Unavailable
from shared.messages.auth import Revocations
from shared.settings import AuthSettings

USER = "3f2a9c1e-0000-4000-8000-000000000002"


def _pages(now: float) -> dict[str | None, Revocations]:
    return {
        None: Revocations(users={USER: now - 5}, sessions={"run-a": now}, session_expiry={"run-a": now + 600},
                          next="3:run-a"),
        "3:run-a": Revocations(users={USER: now - 50}, sessions={"run-b": now}, session_expiry={"run-b": now + 900},
                               next="3:run-b"),
        "3:run-b": Revocations(users={}, sessions={"run-c": now}, session_expiry={"run-c": now + 60}),
    }


def _run_token(session: str) -> Principal:
    return Principal(subject=USER, kind="user", admin=False, client_id="c", username="u", issued_at=time.time(),
                     session=session)


async def _keys():
    return []


async def test_every_page_is_read_and_merged() -> None:
    now, asked = time.time(), []
    pages = _pages(now)

    async def page(after):
        asked.append(after)
        return pages[after]

    read = await read_revocation_pages(page)
    assert asked == [None, "3:run-a", "3:run-b"] and read.next is None
    assert read.users == {USER: now - 5}  # the later moment of the two pages
    assert read.sessions == {"run-a": now, "run-b": now, "run-c": now}
    assert read.session_expiry == {"run-a": now + 600, "run-b": now + 900, "run-c": now + 60}
    verifier = TokenVerifier(AuthSettings(), _keys)
    verifier.read_revocations_from(lambda: read_revocation_pages(page))
    await verifier._read_revocations_once()
    assert all(verifier._is_revoked(_run_token(run)) for run in ("run-a", "run-b", "run-c"))


async def test_a_page_that_fails_fails_the_read_closed() -> None:
    now = time.time()
    pages = _pages(now)
    failing = True

    async def page(after):
        if failing and after == "3:run-b":
            raise reply_too_large(9 * 1024 * 1024, 8 * 1024 * 1024)  # a page the bus would not carry
        return pages[after]

    verifier = TokenVerifier(AuthSettings(), _keys)
    verifier.read_revocations_from(lambda: read_revocation_pages(page))
    with pytest.raises(Unavailable, match="list of revoked tokens could not be read"):
        await verifier._read_revocations_once()  # never read: tokens refused (503), not accepted on part of it
    assert not verifier.revocations_read and not verifier._is_revoked(_run_token("run-a"))  # nothing half-applied

    failing = False
    verifier.set_revocations(**{k: v for k, v in (await read_revocation_pages(page)).model_dump().items()
                                if k != "next"})
    failing = True
    with pytest.raises(Exception, match="above"):
        await read_revocation_pages(page)  # a later poll failing part way ...
    assert verifier._is_revoked(_run_token("run-c"))  # ... leaves what was read before


async def test_a_next_that_does_not_move_on_is_a_fault_not_a_loop() -> None:
    async def page(after):
        return Revocations(users={}, next="3:same")

    with pytest.raises(Unavailable, match="do not end"):
        await read_revocation_pages(page)


def test_the_longest_run_id_auth_takes_fits_the_page_cursor() -> None:
    """A run's id is its session, listed in auth.revocations.list, and a page's `next` is `<part>:<key>`, which
    ListRevocations.after takes up to 1,024 characters: an IssueTaskToken.run_id past that made every verifier's paged
    read fail (closed) until the run's token expired. So run_id is bounded (the scheduler's are UUIDs)."""
    from pydantic import ValidationError

    from services.auth import store
    from shared.messages.auth import ListRevocations
    from shared.messages.tasks import IssueTaskToken

    longest = IssueTaskToken.model_json_schema()["properties"]["run_id"]["anyOf"][0]["maxLength"]
    ListRevocations(after=f"{len(store.REVOCATION_PARTS) - 1}:{'r' * longest}")  # the last part's cursor: taken
    IssueTaskToken(user_id=USER, workspace_id=1, ttl=60, task_id="t", run_id="3f2a9c1e-0000-4000-8000-000000000009")
    with pytest.raises(ValidationError):
        IssueTaskToken(user_id=USER, workspace_id=1, ttl=60, task_id="t", run_id="r" * (longest + 1))


def test_a_version_before_paging_reads_a_one_page_list_and_refuses_a_paged_one() -> None:
    """Mixed versions during an upgrade: the first page is asked for with `{}`, which an auth of before paging (no
    field, unknown ones refused) answers with the whole list; a page's answer names `next` only while more follow, so
    a verifier of before paging (Revocations without `next`, unknown fields refused) reads a one-page list as it did
    and refuses a paged one: failing closed, never taking the first page for the whole list. With `"after": null`
    and `"next": null` in every request and answer, each refused the other's whatever the list's length."""
    from pydantic import Field, ValidationError

    from services.auth.handlers import revocations_reply
    from shared.authz import revocation_page_request
    from shared.messages.auth import ListRevocations
    from shared.messages.base import Command, Message

    class ListRevocationsBefore(Command):  # session 28's
        pass

    class RevocationsBefore(Message):  # session 28's
        users: dict[str, float]
        sessions: dict[str, float] = Field(default_factory=dict)
        session_expiry: dict[str, float] = Field(default_factory=dict)

    first = revocation_page_request(None, ListRevocations)
    ListRevocationsBefore.model_validate(first)  # an auth of before paging takes it (it refused `"after": null`)
    assert ListRevocations.model_validate(first).after is None
    assert ListRevocations.model_validate(revocation_page_request("3:run-a", ListRevocations)).after == "3:run-a"

    now = time.time()
    whole = revocations_reply(Revocations(users={USER: now}, sessions={"run-a": now}, session_expiry={"run-a": now}))
    assert "next" not in whole and RevocationsBefore.model_validate(whole).sessions == {"run-a": now}
    paged = revocations_reply(Revocations(users={USER: now}, next=f"0:{USER}"))
    with pytest.raises(ValidationError, match="next"):
        RevocationsBefore.model_validate(paged)  # fails closed: a first page is not the list
    assert Revocations.model_validate(paged).next == f"0:{USER}"


async def test_a_next_too_long_to_ask_for_fails_the_read_closed_as_unavailable() -> None:
    """A page whose `next` is longer than ListRevocations.after takes (1,024 characters: a key of the list that long)
    cannot be asked for: the read fails as Unavailable, so a verifier that never read the list answers a token 503
    (typed), not the model's ValidationError (no RailyardError: a 500), and a feed keeps the list it had."""
    from shared.authz import revocation_page_request
    from shared.messages.auth import ListRevocations

    now, asked = time.time(), []
    cursor = "3:" + "r" * 1023

    async def page(after):  # as bus_verifier's: the request's body built from the cursor
        asked.append(revocation_page_request(after, ListRevocations))
        return Revocations(users={USER: now}, next=cursor)

    with pytest.raises(Unavailable, match="longer than auth.revocations.list takes"):
        await read_revocation_pages(page)
    assert asked == [{}]  # the first page only: nothing asked with a cursor cut short
    verifier = TokenVerifier(AuthSettings(), _keys)
    verifier.read_revocations_from(lambda: read_revocation_pages(page))
    with pytest.raises(Unavailable, match="tokens cannot be checked yet"):
        await verifier._read_revocations_once()
    longest = cursor[:1024]  # the longest cursor it takes is still asked for
    assert ListRevocations.model_validate(revocation_page_request(longest, ListRevocations)).after == longest
