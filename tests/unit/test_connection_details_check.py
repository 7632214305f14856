"""A connection's `host` written with its port (`127.0.0.1:15432`), or an `endpoint` without a scheme, names a
platform server as surely as `host` + `port` does: both were let through (the host was looked up as the name
`127.0.0.1:15432`, which does not resolve, and a scheme-less endpoint was not checked at all)."""

from __future__ import annotations

import pytest

from services.registry.connections import _check_details
from shared.errors import InvalidRequest
from shared.urlcheck import OutboundRules

RULES = OutboundRules(private_allowed=True, platform=frozenset({("127.0.0.1", 15432), ("127.0.0.1", 18333)}))


@pytest.mark.parametrize("details", [
    {"host": "127.0.0.1:15432"}, {"host": "localhost:15432", "port": 5432}, {"host": "[::1]:18333"},
    {"endpoint": "127.0.0.1:18333"}, {"Endpoint": "localhost:18333"}, {"host": "127.0.0.1", "port": 15432},
])
async def test_a_host_with_its_port_or_a_bare_endpoint_at_a_platform_server_is_refused(details):
    with pytest.raises(InvalidRequest, match="this platform's own servers") as refused:
        await _check_details(details, RULES)
    assert refused.value.code == "url_not_allowed"


@pytest.mark.parametrize("details", [
    {"host": "127.0.0.1:5432"}, {"host": "db.invalid:15432"}, {"endpoint": "127.0.0.1:9000"}, {"host": "::1"},
    {"host": "10.0.0.5", "port": 5432}, {"endpoint": "s3.invalid"}, {"username": "127.0.0.1:15432"},
])
async def test_a_tenants_own_servers_are_kept(details):
    await _check_details(details, RULES)
