"""Outbound URLs chosen by tenants (model registries, connection details) are checked before every use, so that a
tenant cannot make a platform service talk to the platform's own servers or to cloud metadata (SSRF).

The rule (`OutboundRules`, docs/security.md "Tenant URLs"):
- http/https only;
- refused always: link-local addresses (169.254/16, fe80::/10), cloud metadata (169.254.169.254, fd00:ec2::254,
  100.100.100.200, the metadata host names), unspecified, multicast and reserved addresses, IPv4 addresses
  wrapped in IPv6 (::ffff:a.b.c.d, 64:ff9b::/96) judged as the IPv4 address they carry;
- refused always: the platform's own endpoints, known from the settings (NATS and its monitoring port, PostgreSQL,
  the S3 server, the gateway, and in the embedded stack every SeaweedFS port), on any address that reaches them
  (for a server bound to a loopback or unspecified address: every loopback address, and the machine's own
  addresses);
- loopback and private ranges only when `private_allowed` (RAILYARD_REGISTRY__PRIVATE_URLS; unset: in development
  mode only), so the embedded stack still reaches an MLflow server on 127.0.0.1.

A refusal is 400 `url_not_allowed`, naming the rule. Names are resolved and every address is checked at each use,
and the caller connects to the address that was checked (`CheckedUrl.pinned`), so a name that resolves elsewhere
between the check and the connection (DNS rebinding) gains nothing."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse, urlunparse

from shared.errors import InvalidRequest

METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}
NAT64 = ipaddress.ip_network("64:ff9b::/96")
ENDPOINT_CACHE_SECONDS = 60.0
REFUSED = "url_not_allowed"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def refused(msg: str) -> InvalidRequest:
    """The one error a refused URL gets: 400 `url_not_allowed`."""
    return InvalidRequest(msg, code=REFUSED)


def _unwrapped(address: Address) -> Address:
    """The IPv4 address an IPv6 one carries (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _range_reason(address: Address, private_allowed: bool) -> str | None:
    if address in METADATA_ADDRESSES or address.is_link_local:
        return "link-local and cloud metadata addresses are not allowed"
    if address.is_unspecified or address.is_multicast:
        return "that address cannot be used"
    if address.is_loopback or address.is_private:  # before is_reserved, which ::1 (in ::/8) also is
        return None if private_allowed else (
            "loopback and private addresses are not allowed on this platform (RAILYARD_REGISTRY__PRIVATE_URLS):"
            " use the server's public address")
    if address.is_reserved:
        return "that address cannot be used"
    return None


def _host_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    """(host, port) of `host`, `host:port`, `[v6]:port`, with any `user:pass@` dropped."""
    parsed = urlparse(f"//{netloc.rsplit('@', 1)[-1].strip()}")
    try:
        port = parsed.port or default_port
    except ValueError:
        return None
    return (parsed.hostname, port) if parsed.hostname else None


def platform_endpoints(settings: Any) -> frozenset[tuple[str, int]]:
    """The platform's own servers as (host, port), from the settings every service reads: the bus, the database,
    object storage, the gateway, and the embedded stack's ports (SeaweedFS's HTTP and gRPC ports included)."""
    from shared.embedded.servers import GRPC_OFFSET  # a constant; the module starts nothing when imported

    found: set[tuple[str, int] | None] = set()
    for url in settings.nats.url.split(","):
        found.add(_host_port(urlparse(url.strip()).netloc, 4222))
    dsn = urlparse(settings.postgres.dsn)
    for netloc in dsn.netloc.rsplit("@", 1)[-1].split(","):  # libpq allows host1:5432,host2:5433
        found.add(_host_port(netloc, 5432))
    found.add(_host_port(settings.s3.endpoint, 443 if settings.s3.secure else 80))
    found.add((settings.gateway.host, settings.gateway.port))
    stack = settings.stack
    ports = [stack.nats_port, stack.nats_monitor_port, stack.postgres_port, getattr(stack, "nats_prof_port", 0)]
    for port in (stack.s3_port, stack.weed_master_port, stack.weed_volume_port, stack.weed_filer_port):
        ports += [port, port + GRPC_OFFSET]
    found.update((stack.host, port) for port in ports if port)
    return frozenset(endpoint for endpoint in found if endpoint is not None)


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the rules, with the addresses it may be fetched from (the ones that were checked, in the
    resolver's order of preference)."""

    url: str
    host: str
    addresses: tuple[Address, ...]

    @property
    def address(self) -> Address:
        """The preferred checked address."""
        return self.addresses[0]

    def pinned(self, address: Address | None = None) -> tuple[str, dict[str, str], dict[str, Any]]:
        """(url, headers, httpx extensions) that reach a checked address (`address`, one of `addresses`; default the
        preferred one) while speaking to the named host: the URL names the address, `Host` the name, and TLS sends
        and verifies the name (httpcore's `sni_hostname`)."""
        address = self.address if address is None else address
        if address not in self.addresses:
            raise ValueError("not a checked address")
        parsed = urlparse(self.url)
        userinfo, _, named = parsed.netloc.rpartition("@")
        literal = f"[{address}]" if address.version == 6 else str(address)
        netloc = (f"{userinfo}@" if userinfo else "") + (f"{literal}:{parsed.port}" if parsed.port else literal)
        headers = {"Host": named}
        extensions = {"sni_hostname": self.host} if parsed.scheme == "https" else {}
        return urlunparse(parsed._replace(netloc=netloc)), headers, extensions


@dataclass
class OutboundRules:
    """What a platform service may fetch for a tenant: never link-local/metadata or the platform's own endpoints,
    loopback and private ranges only when `private_allowed`."""

    private_allowed: bool
    platform: frozenset[tuple[str, int]] = frozenset()
    _resolved: dict[str, tuple[float, frozenset[Address]]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Any) -> OutboundRules:
        """The rules of this deployment: RAILYARD_REGISTRY__PRIVATE_URLS (unset: development mode only) and the
        endpoints in the settings."""
        private = settings.registry.private_urls
        return cls(private_allowed=settings.env == "development" if private is None else private,
                   platform=platform_endpoints(settings))

    async def _addresses(self, host: str) -> frozenset[Address]:
        cached = self._resolved.get(host)
        if cached is not None and time.monotonic() - cached[0] < ENDPOINT_CACHE_SECONDS:
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
            addresses = frozenset(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos)
        except (OSError, ValueError):
            addresses = frozenset()
        self._resolved[host] = (time.monotonic(), addresses)
        return addresses

    async def _is_platform(self, address: Address, port: int) -> bool:
        """Does (address, port) reach one of the platform's own servers?"""
        for host, endpoint_port in self.platform:
            if endpoint_port != port:
                continue
            for bound in await self._addresses(host):
                if bound == address or (bound.is_loopback and address.is_loopback):
                    return True
                if bound.is_unspecified and (address.is_loopback or address in await self._own_addresses()):
                    return True
        return False

    async def _own_addresses(self) -> frozenset[Address]:
        return await self._addresses(socket.gethostname())

    async def check(self, url: str, what: str = "url") -> CheckedUrl:
        """The URL and the address to fetch it from, if it may be fetched now; 400 `url_not_allowed` naming the
        rule otherwise (nothing is fetched)."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https"):
            raise refused(f"{what} must be an http or https URL")
        host = parsed.hostname
        if not host:
            raise refused(f"{what} has no host")
        if host.lower().rstrip(".") in METADATA_HOSTS:
            raise refused(f"{what}: cloud metadata hosts are not allowed")
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise refused(f"{what} has an invalid port") from None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise refused(f"{what}: the host {host!r} does not resolve") from None
        addresses = tuple(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        for address in addresses:
            await self._check_address(address, port, f"{what} ({host})")
        return CheckedUrl(url=url, host=host, addresses=addresses)

    async def _check_address(self, address: Address, port: int, what: str) -> None:
        for candidate in dict.fromkeys((_unwrapped(address), address)):  # the carried IPv4 first
            reason = _range_reason(candidate, self.private_allowed)
            if reason:
                raise refused(f"{what}: {reason}")
            if await self._is_platform(candidate, port):
                raise refused(f"{what}: port {port} there is one of this platform's own servers, which tenants' "
                              "URLs may not reach: give the address of your own server")

    async def check_host(self, host: str, port: int | None = None, what: str = "host") -> None:
        """A bare host name or address (a connection's `host` detail, with its `port` if given): metadata names and
        link-local addresses are refused always, and with a port the platform's own endpoints, as in `check`. A name
        that does not resolve here is let through: it is stored for the tenant's code, not fetched by the platform."""
        name = host.strip().lower().rstrip(".")
        if name in METADATA_HOSTS:
            raise refused(f"{what}: cloud metadata hosts are not allowed")
        try:
            addresses = {ipaddress.ip_address(name.strip("[]"))}
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                return
            addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
        for candidate in dict.fromkeys(a for address in addresses for a in (_unwrapped(address), address)):
            if candidate in METADATA_ADDRESSES or candidate.is_link_local:
                raise refused(f"{what}: link-local and cloud metadata addresses are not allowed")
            if port is not None and await self._is_platform(candidate, port):
                raise refused(f"{what}: port {port} there is one of this platform's own servers, which tenants' "
                              "details may not name: give the address of your own server")
