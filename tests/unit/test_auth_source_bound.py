"""`source` of auth's sign-in commands (IssueToken, AuthorizeUser: failed logins are counted per name and source, as
rows of auth's database and keys of its memory) is bounded: a longer one is refused on the bus's validation path,
400 invalid_request naming the field, before the handler runs. Every source the gateway sends fits."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.source_address import SourceAddress, counted_as
from shared.bus import CallContext, run_command
from shared.messages.auth import SOURCE_CHARS, AuthorizeUser, IssueToken

BODIES = {
    IssueToken: {"grant_type": "password", "client_id": "api-client", "client_secret": "s", "username": "admin",
                 "password": "p"},
    AuthorizeUser: {"client_id": "railyard-ui", "redirect_uri": "http://127.0.0.1:18000/",
                    "code_challenge": "c" * 43, "username": "admin", "password": "p"},
}


@pytest.mark.parametrize("model", list(BODIES))
def test_a_source_longer_than_the_bound_is_refused_before_the_handler(model):
    called = []

    async def handler(cmd, ctx):
        called.append(cmd)
        return None

    def answer(source: str):
        return asyncio.run(run_command(handler, model, BODIES[model] | {"source": source}, CallContext(subject="s")))

    refused = answer("1" * (SOURCE_CHARS + 1))
    assert not refused.ok and refused.status == 400 and refused.error.code == "invalid_request", refused
    assert "source" in refused.error.msg and str(SOURCE_CHARS) in refused.error.msg, refused.error
    assert called == []  # was: taken, whatever its length
    assert answer("1" * SOURCE_CHARS).ok and len(called) == 1


@pytest.mark.parametrize("peer, forwarded", [
    ("255.255.255.255", ()),
    ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", ()),  # the longest text of an IPv6 address: its /64
    ("fe80::1%" + "x" * 200, ()),  # a scope the address may carry: left out of the /64
    ("::ffff:255.255.255.255", ()),
    (None, ()),  # no peer: `unknown`
    ("10.0.0.1", ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff, 10.0.0.2",)),  # behind the trusted proxy
])
def test_every_source_the_gateway_sends_fits(peer, forwarded):
    source = counted_as(SourceAddress(["10.0.0.0/8"]).of(peer, forwarded))
    assert len(source) <= 24 or source == "unknown", source
    IssueToken.model_validate(BODIES[IssueToken] | {"source": source})
    AuthorizeUser.model_validate(BODIES[AuthorizeUser] | {"source": source})
