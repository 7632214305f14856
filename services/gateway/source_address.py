"""The address a request comes from, as the token endpoint's per-source rate limit and the auth service's failed-login
counts key it: the TCP peer, or, when the peer is a trusted reverse proxy (`RAILYARD_GATEWAY__TRUSTED_PROXIES`), the
right-most address in X-Forwarded-For that is not itself a trusted proxy.

Why the right-most untrusted entry: each proxy appends the address it received the request from, so the entries
right of it were written by our own proxies and it is the address the first of them saw; everything left of it came
with the request and anyone can make it up. Keying on the left-most ("original client") entry, or on the header from
a peer that is not a trusted proxy, would let any client choose its own bucket. (MDN, X-Forwarded-For, "Selecting an
IP address"; the same rule as nginx's `real_ip_recursive on`.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

UNKNOWN = "unknown"


def parse_address(text: str) -> IPv4Address | IPv6Address | None:
    """An address as proxies write it (`1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`), an
    IPv4-mapped IPv6 address as its IPv4 address; None when it is not an address (`unknown`, an obfuscated id)."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class SourceAddress:
    """A request's source address from its TCP peer and X-Forwarded-For, believing the header from `proxies` only
    (addresses or CIDRs, as `GatewaySettings.trusted_proxies` checked them)."""

    def __init__(self, proxies: Iterable[str] = ()) -> None:
        self.proxies: tuple[IPv4Network | IPv6Network, ...] = tuple(ip_network(p, strict=False) for p in proxies)

    def trusted(self, address: IPv4Address | IPv6Address) -> bool:
        return any(address in network for network in self.proxies)

    def of(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """The source of a request from `peer` carrying these X-Forwarded-For header values (all of them, in order:
        a request may carry the header more than once, which is one list)."""
        if peer is None:
            return UNKNOWN
        if not self.proxies:
            return peer  # no proxy trusted: the peer as it is, the header never read
        address = parse_address(peer)
        if address is None or not self.trusted(address):
            return peer
        nearest = str(address)  # the left-most trusted hop so far
        hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                # not an address where a proxy of ours writes one: the chain cannot be read past it; key on the
                # trusted hop that forwarded it rather than on text the client may have chosen
                return nearest
            if not self.trusted(address):
                return str(address)
            nearest = str(address)
        return nearest  # the request came from a trusted host itself (a proxy's own health check)
