"""The address a request comes from, as the token endpoint's per-source rate limit and the auth service's failed-login
counts key it: the TCP peer, or, when the peer is a trusted reverse proxy (`RAILYARD_GATEWAY__TRUSTED_PROXIES`), the
right-most address in X-Forwarded-For (or, with `RAILYARD_GATEWAY__TRUSTED_PROXY_HEADER=forwarded`, in the `for=`
parameters of RFC 7239's `Forwarded`) that is not itself a trusted proxy.

Why the right-most untrusted entry: each proxy appends the address it received the request from, so the entries
right of it were written by our own proxies and it is the address the first of them saw; everything left of it came
with the request and anyone can make it up. Keying on the left-most ("original client") entry, or on the header from
a peer that is not a trusted proxy, would let any client choose its own bucket. (MDN, X-Forwarded-For, "Selecting an
IP address"; the same rule as nginx's `real_ip_recursive on`.)

Only one of the two headers is read, the one the trusted proxies write: a proxy appends to its own header and passes
the other through as the client sent it, so reading both (or whichever is present) would let a client choose its
source by sending the header the proxy does not write.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from shared.messages.auth import SOURCE_CHARS

UNKNOWN = "unknown"
X_FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"


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


_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;,"]+))\s*')
_QUOTED_PAIR = re.compile(r"\\(.)")


def forwarded_nodes(value: str) -> list[str]:
    """The `for=` node of each element of one RFC 7239 `Forwarded` header value, in order
    (`for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"` -> `192.0.2.60`, `[2001:db8:cafe::17]:4711`). An
    element without `for=`, or that does not parse, gives "" (not an address); reading resumes after the next comma
    outside quotes (an unterminated quote ends the value)."""
    nodes: list[str] = []
    at, node, broken, seen = 0, None, False, False
    while at < len(value):
        pair = _PAIR.match(value, at)
        if pair is not None:
            seen, at = True, pair.end()
            if pair.group(1).lower() == "for":
                broken = broken or node is not None  # a parameter occurs once per element (RFC 7239 section 4)
                node = _QUOTED_PAIR.sub(r"\1", pair.group(2)) if pair.group(2) is not None else pair.group(3)
        elif value[at] not in ";," and value[at:].split(",", 1)[0].strip():
            seen, broken, at = True, True, _next_comma(value, at)
        else:
            at += len(value[at:]) - len(value[at:].lstrip())  # blanks
        if at < len(value) and value[at] not in ";,":
            seen, broken, at = True, True, _next_comma(value, at)
        if at >= len(value) or value[at] == ",":
            if seen:  # an empty element (`a,,b`) is nothing, as in any header list
                nodes.append("" if broken or node is None else node)
            node, broken, seen = None, False, False
        at += 1
    if seen:  # the value ended with a `;`
        nodes.append("" if broken or node is None else node)
    return nodes


def _next_comma(value: str, at: int) -> int:
    """The index of the next comma outside a quoted string from `at` (len(value) when there is none)."""
    quoted = escaped = False
    for index in range(at, len(value)):
        char = value[index]
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            return index
    return len(value)


def counted_as(source: str) -> str:
    """The key a source (as `SourceAddress.of` gives it) is counted under, by the token endpoint's per-source bucket
    and the auth service's failed logins: an IPv6 address's /64 (`2001:db8:1:2::/64`), an IPv4 address as it is.
    Why the /64: it is the smallest network an IPv6 client is usually given (one LAN or subscriber, RFC 6177), and
    every address inside it is free to whoever has it, so keyed by full address one client could take a bucket and
    a failed-login count per request. The price: clients sharing a /64 share a bucket and a lock, as clients behind
    one IPv4 NAT do. A source that is no address (`unknown`, a peer the ASGI server named otherwise) is counted as
    its first SOURCE_CHARS characters, the longest source the sign-in commands take (a longer one was a 400 there)."""
    address = parse_address(source)
    if address is None:
        return source[:SOURCE_CHARS]  # "unknown"
    if isinstance(address, IPv6Address):
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)  # an IPv4-mapped IPv6 address as its IPv4 address


class SourceAddress:
    """A request's source address from its TCP peer and the forwarding header the trusted proxies write
    (X-Forwarded-For, or RFC 7239 `Forwarded`), believing it from `proxies` only (addresses or CIDRs, as
    `GatewaySettings.trusted_proxies` checked them)."""

    def __init__(self, proxies: Iterable[str] = (), header: str = X_FORWARDED_FOR) -> None:
        self.proxies: tuple[IPv4Network | IPv6Network, ...] = tuple(ip_network(p, strict=False) for p in proxies)
        if header.lower() not in (X_FORWARDED_FOR, FORWARDED):
            raise ValueError(f"the forwarding header is {X_FORWARDED_FOR!r} or {FORWARDED!r}, not {header!r}")
        self.header = header.lower()  # the one header read: `request.headers.getlist(source.header)`

    def trusted(self, address: IPv4Address | IPv6Address) -> bool:
        return any(address in network for network in self.proxies)

    def of(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """The source of a request from `peer` carrying these values of `self.header` (all of them, in order: a
        request may carry the header more than once, which is one list)."""
        if peer is None:
            return UNKNOWN
        if not self.proxies:
            return peer  # no proxy trusted: the peer as it is, the header never read
        address = parse_address(peer)
        if address is None or not self.trusted(address):
            return peer
        nearest = str(address)  # the left-most trusted hop so far
        if self.header == FORWARDED:
            hops = [hop for value in forwarded_for for hop in forwarded_nodes(value)]
        else:
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
