"""The source address the gateway keys its per-source token limit (and the auth service its failed-login counts) on:
the TCP peer, or behind trusted proxies the right-most untrusted X-Forwarded-For entry."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.ratelimit import TokenBuckets, TokenEndpointLimits
from services.gateway.source_address import SourceAddress, parse_address
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


def test_trusted_proxies_setting(monkeypatch):
    assert GatewaySettings().trusted_proxies == []
    monkeypatch.setenv("RAILYARD_GATEWAY__TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7 ,2001:db8::/32")
    assert Settings().gateway.trusted_proxies == ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]
    assert GatewaySettings(trusted_proxies='["127.0.0.1"]').trusted_proxies == ["127.0.0.1/32"]
    with pytest.raises(ValidationError, match="'10.0.0.300' is not an IP address or CIDR"):
        GatewaySettings(trusted_proxies="10.0.0.0/8,10.0.0.300")
