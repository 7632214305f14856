"""The source address the gateway keys its per-source token limit (and the auth service its failed-login counts) on:
the TCP peer, or behind trusted proxies the right-most untrusted X-Forwarded-For entry."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.ratelimit import TokenBuckets, TokenEndpointLimits
from services.gateway.source_address import SourceAddress, counted_as, forwarded_nodes, parse_address
from shared.errors import TooManyRequests
from shared.settings import GatewaySettings, Settings

PROXIES = ["10.0.0.0/8", "2001:db8:a::/48", "192.168.1.7"]


def test_without_trusted_proxies_the_peer_is_the_source_and_the_header_is_never_read():
    source = SourceAddress()
    assert source.of("203.0.113.9", ["198.51.100.1"]) == "203.0.113.9"
    assert source.of("10.0.0.2", ["198.51.100.1"]) == "10.0.0.2"  # a proxy, but none is trusted
    assert source.of(None, ["198.51.100.1"]) == "unknown"


def test_a_spoofed_header_from_an_untrusted_peer_is_ignored():
    source = SourceAddress(PROXIES)
    assert source.of("203.0.113.9", ["198.51.100.1"]) == "203.0.113.9"
    assert source.of("203.0.113.9", ["10.0.0.1"]) == "203.0.113.9"  # naming a trusted proxy does not help either


def test_behind_one_proxy_the_address_it_appended_is_the_source():
    source = SourceAddress(PROXIES)
    assert source.of("10.1.2.3", ["203.0.113.9"]) == "203.0.113.9"
    # a client's own header comes first; the proxy appends the real peer: the made-up entries are left of it
    assert source.of("10.1.2.3", ["198.51.100.1, 1.1.1.1, 203.0.113.9"]) == "203.0.113.9"
    assert source.of("10.1.2.3", ["not-an-address, 203.0.113.9"]) == "203.0.113.9"


def test_through_a_chain_of_proxies_the_right_most_untrusted_entry_is_the_source():
    source = SourceAddress(PROXIES)
    chain = ["198.51.100.1, 203.0.113.9, 192.168.1.7, 10.9.9.9"]  # spoofed, client, edge proxy, inner proxy
    assert source.of("10.0.0.5", chain) == "203.0.113.9"
    # the header sent more than once is one list, in order
    assert source.of("10.0.0.5", ["198.51.100.1", "203.0.113.9, 192.168.1.7", "10.9.9.9"]) == "203.0.113.9"
    # a host next to the trusted one in the same /24 is not trusted: it is the source
    assert source.of("10.0.0.5", ["203.0.113.9, 192.168.1.8, 10.9.9.9"]) == "192.168.1.8"


def test_ipv6_ports_and_mapped_addresses():
    source = SourceAddress(PROXIES)
    assert source.of("2001:db8:a::1", ["2001:db8:ff::7"]) == "2001:db8:ff::7"
    assert source.of("::ffff:10.0.0.5", ["[2001:db8:ff::7]:4711"]) == "2001:db8:ff::7"  # dual-stack peer
    assert source.of("10.0.0.5", ["203.0.113.9:51000"]) == "203.0.113.9"
    assert source.of("10.0.0.5", ["::ffff:203.0.113.9"]) == "203.0.113.9"
    assert parse_address("unknown") is None and parse_address("_hidden") is None


def test_what_cannot_be_read_falls_back_to_the_nearest_trusted_hop_never_to_client_text():
    source = SourceAddress(PROXIES)
    assert source.of("10.0.0.5", []) == "10.0.0.5"  # a trusted host's own request (a health check)
    assert source.of("10.0.0.5", [""]) == "10.0.0.5"
    assert source.of("10.0.0.5", ["10.7.7.7"]) == "10.7.7.7"  # all trusted: the furthest hop
    assert source.of("10.0.0.5", ["203.0.113.9, unknown"]) == "10.0.0.5"
    assert source.of("10.0.0.5", ["203.0.113.9, garbage, 10.7.7.7"]) == "10.7.7.7"


def test_clients_behind_one_proxy_get_buckets_of_their_own():
    source = SourceAddress(["10.0.0.1"])
    limits = TokenEndpointLimits(TokenBuckets(0.001, 1), TokenBuckets(1000.0, 1000))
    limits.check_source(source.of("10.0.0.1", ["203.0.113.9"]))
    limits.check_source(source.of("10.0.0.1", ["203.0.113.10"]))  # another client through the same proxy
    with pytest.raises(TooManyRequests):
        limits.check_source(source.of("10.0.0.1", ["198.51.100.1, 203.0.113.9"]))  # a spoofed prefix changes nothing


def test_an_ipv6_source_is_counted_as_its_64():
    """The key of the per-source bucket and of the auth service's failed logins (the gateway sends it as the source)."""
    assert counted_as("2001:db8:1:2:3:4:5:6") == counted_as("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert counted_as("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert counted_as(counted_as("2001:db8:1:2::1")) == "2001:db8:1:2::/64"  # counting twice changes nothing
    assert counted_as("203.0.113.9") == counted_as("::ffff:203.0.113.9") == "203.0.113.9"
    assert counted_as("unknown") == "unknown"


def test_a_peer_that_is_no_address_is_counted_as_at_most_the_sign_in_bound():
    """A non-IP peer (as the ASGI server names it) longer than the sign-in commands' `source` bound is cut to it: it
    was sent whole, and auth's sign-in answered 400 invalid_request for every request from that peer."""
    from shared.messages.auth import SOURCE_CHARS, AuthorizeUser, IssueToken

    peer = "peer-" + "x" * (2 * SOURCE_CHARS)
    source = counted_as(SourceAddress().of(peer))
    assert source == peer[:SOURCE_CHARS]
    assert counted_as(source) == source  # counting twice changes nothing
    assert counted_as(SourceAddress(PROXIES).of(peer, ["203.0.113.9"])) == source  # not a proxy: the header unread
    IssueToken.model_validate({"grant_type": "password", "client_id": "c", "client_secret": "s", "source": source})
    AuthorizeUser.model_validate({"client_id": "c", "redirect_uri": "http://127.0.0.1/", "code_challenge": "c" * 43,
                                  "username": "u", "password": "p", "source": source})
    assert counted_as("y" * SOURCE_CHARS) == "y" * SOURCE_CHARS  # one at the bound as it is


def test_the_auth_commands_describe_the_source_the_gateway_sends():
    """IssueToken.source and AuthorizeUser.source are what counted_as gives (an IPv6 client's /64), not the client's
    address as the gateway saw it: the contract (protos/) tells a bus caller what the auth service counts by."""
    from shared.messages.auth import AuthorizeUser, IssueToken

    for command in (IssueToken, AuthorizeUser):
        described = command.model_fields["source"].description
        assert "/64" in described and "as the gateway saw it" not in described, (command.__name__, described)


def test_trusted_proxies_setting(monkeypatch):
    assert GatewaySettings().trusted_proxies == []
    monkeypatch.setenv("RAILYARD_GATEWAY__TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7 ,2001:db8::/32")
    assert Settings().gateway.trusted_proxies == ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]
    assert GatewaySettings(trusted_proxies='["127.0.0.1"]').trusted_proxies == ["127.0.0.1/32"]
    with pytest.raises(ValidationError, match="'10.0.0.300' is not an IP address or CIDR"):
        GatewaySettings(trusted_proxies="10.0.0.0/8,10.0.0.300")


# RFC 7239 `Forwarded`, for proxies that write it (RAILYARD_GATEWAY__TRUSTED_PROXY_HEADER=forwarded)

def test_forwarded_nodes_are_read_as_rfc_7239_writes_them():
    assert forwarded_nodes("for=192.0.2.60;proto=http;by=203.0.113.43") == ["192.0.2.60"]
    assert forwarded_nodes('For="[2001:db8:cafe::17]:4711", for=192.0.2.43') == ["[2001:db8:cafe::17]:4711",
                                                                                 "192.0.2.43"]
    assert forwarded_nodes('proto=https;for="192.0.2.7:443";host=example.com') == ["192.0.2.7:443"]
    assert forwarded_nodes("for=unknown, for=_hidden") == ["unknown", "_hidden"]  # not addresses: parse_address
    assert forwarded_nodes("for=198.51.100.1,, for=203.0.113.9;") == ["198.51.100.1", "203.0.113.9"]
    assert forwarded_nodes("") == [] and forwarded_nodes("  ") == []
    # an element that cannot be read is one unreadable hop; the elements after it are read
    assert forwarded_nodes("garbage, by=10.0.0.1, for=1.1.1.1;for=2.2.2.2, for=203.0.113.9") == ["", "", "",
                                                                                              "203.0.113.9"]
    assert forwarded_nodes('for="a\\"b, c", for=203.0.113.9') == ['a"b, c', "203.0.113.9"]  # quoted comma
    assert forwarded_nodes('for="203.0.113.9, for=198.51.100.1') == [""]  # an unterminated quote ends the value


def test_behind_proxies_writing_forwarded_the_right_most_untrusted_for_is_the_source():
    source = SourceAddress(PROXIES, "Forwarded")
    assert source.header == "forwarded"
    assert source.of("10.1.2.3", ["for=203.0.113.9;proto=https"]) == "203.0.113.9"
    # spoofed elements the client sent come first; the proxies append theirs
    chain = ['for=198.51.100.1, for="[2001:db8:ff::7]:4711";proto=https, for=192.168.1.7;by=10.9.9.9']
    assert source.of("10.0.0.5", chain) == "2001:db8:ff::7"
    assert source.of("10.0.0.5", ["for=198.51.100.1", "for=203.0.113.9", "for=10.9.9.9"]) == "203.0.113.9"
    # what cannot be read falls back to the nearest trusted hop, never to text the client chose
    assert source.of("10.0.0.5", ["for=203.0.113.9, for=unknown"]) == "10.0.0.5"
    assert source.of("10.0.0.5", ["for=203.0.113.9, proto=https"]) == "10.0.0.5"  # an element without for=
    assert source.of("10.0.0.5", ['for=203.0.113.9, for="_hidden", for=10.7.7.7']) == "10.7.7.7"
    assert source.of("10.0.0.5", []) == "10.0.0.5"


def test_only_the_header_the_proxies_write_is_read():
    # a proxy appends to its own header and passes the other through as the client sent it
    xff, forwarded = SourceAddress(PROXIES), SourceAddress(PROXIES, "forwarded")
    assert xff.header == "x-forwarded-for" and xff.of("10.0.0.5", ["for=198.51.100.1"]) == "10.0.0.5"
    assert forwarded.of("10.0.0.5", ["198.51.100.1"]) == "10.0.0.5"  # X-Forwarded-For syntax is not an element
    # from a peer that is not a trusted proxy the header is never read, whichever it is
    assert forwarded.of("203.0.113.9", ["for=198.51.100.1"]) == "203.0.113.9"
    assert SourceAddress((), "forwarded").of("10.0.0.5", ["for=198.51.100.1"]) == "10.0.0.5"
    with pytest.raises(ValueError, match="x-real-ip"):
        SourceAddress(PROXIES, "x-real-ip")


def test_trusted_proxy_header_setting(monkeypatch):
    assert GatewaySettings().trusted_proxy_header == "x-forwarded-for"
    monkeypatch.setenv("RAILYARD_GATEWAY__TRUSTED_PROXY_HEADER", "Forwarded")
    assert Settings().gateway.trusted_proxy_header == "forwarded"
    with pytest.raises(ValidationError):
        GatewaySettings(trusted_proxy_header="x-real-ip")


@pytest.mark.parametrize("header", ["forwarded", "x-forwarded-for"])
async def test_the_token_endpoint_keys_its_limit_on_the_configured_header(header):
    """The gateway's own token route, in process: behind a trusted proxy writing `header`, each client it names has
    its own per-source bucket (burst 1 here), and the other header, which the proxy would pass through from the
    client, changes nothing."""
    from types import SimpleNamespace

    import httpx

    from services.gateway.http import create_app

    settings = Settings(gateway=GatewaySettings(trusted_proxies=["127.0.0.5"], trusted_proxy_header=header,
                                                token_rate_per_source=0.001, token_burst_per_source=1))
    app = create_app(SimpleNamespace(settings=settings, extras={}, broker=None, objects=None))
    other = "x-forwarded-for" if header == "forwarded" else "forwarded"

    def names(client: str, spoofed: str) -> dict[str, str]:
        value = f'for="{client}";proto=https' if header == "forwarded" else client
        return {header: value, other: f"for={spoofed}" if other == "forwarded" else spoofed}

    transport = httpx.ASGITransport(app=app, client=("127.0.0.5", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as proxy:
        async def status(headers: dict[str, str]) -> int:
            # no grant_type: a 400 from the route once the source's bucket let it through, nothing reaches the bus
            response = await proxy.post("/auth/realms/master/protocol/openid-connect/token", data={},
                                        auth=("api-client", "x"), headers=headers)
            assert response.status_code == 429 or "grant_type" in response.text, response.text
            return response.status_code

        assert await status(names("203.0.113.9", "198.51.100.1")) == 400
        assert await status(names("203.0.113.9", "198.51.100.2")) == 429  # its bucket, whatever the other header
        assert await status(names("203.0.113.10", "198.51.100.1")) == 400  # another client: a bucket of its own
