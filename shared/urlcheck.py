"""Outbound URLs chosen by users (model registries, connection hosts) are checked before every use:
http/https only, never link-local or cloud metadata addresses, loopback and private ranges only when the
platform runs in development mode. Names are resolved and every address they resolve to is checked, at the
moment of use, so a name that later points elsewhere is caught too."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlparse

from shared.errors import InvalidRequest

METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}


def _address_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, development: bool) -> str | None:
    if address.is_link_local or address in ipaddress.ip_network("100.100.100.200/32"):
        return "link-local and cloud metadata addresses are not allowed"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "that address cannot be used"
    if (address.is_loopback or address.is_private) and not development:
        return "loopback and private addresses are allowed only in development mode"
    return None


async def check_outbound_url(url: str, *, development: bool, what: str = "url") -> str:
    """The URL, if it may be fetched now; InvalidRequest naming the rule otherwise."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise InvalidRequest(f"{what} must be an http or https URL")
    host = parsed.hostname
    if not host:
        raise InvalidRequest(f"{what} has no host")
    if host.lower() in METADATA_HOSTS:
        raise InvalidRequest(f"{what}: cloud metadata hosts are not allowed")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parsed.port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidRequest(f"{what}: the host {host!r} does not resolve") from None
    for info in infos:
        reason = _address_allowed(ipaddress.ip_address(info[4][0].split("%")[0]), development)
        if reason:
            raise InvalidRequest(f"{what} ({host}): {reason}")
    return url
