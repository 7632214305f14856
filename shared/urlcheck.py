"""Outbound URLs chosen by tenants (model registries, connection details) are checked before every use, so that a
tenant cannot make a platform service talk to the platform's own servers or to cloud metadata (SSRF).

The rule (`OutboundRules`, docs/security.md "Tenant URLs"):
- http/https only for what a service fetches (`check`: registries); a connection's details may name any scheme
  (`check_host` on every server `endpoints_in` finds in them);
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
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlparse, urlsplit, urlunparse

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


# The port a client uses when a URL of that scheme gives none (an SQLAlchemy driver suffix, `postgresql+psycopg`,
# and `jdbc:` in front are read as the scheme they qualify). A scheme not listed has no default: its host is
# checked for metadata and link-local addresses only.
DEFAULT_PORTS = {
    "http": 80, "https": 443, "ws": 80, "wss": 443, "postgres": 5432, "postgresql": 5432, "pgsql": 5432,
    "redshift": 5439, "cockroachdb": 26257, "mysql": 3306, "mariadb": 3306, "redis": 6379, "rediss": 6379,
    "mongodb": 27017, "nats": 4222, "tls": 4222, "s3": 443, "s3a": 443, "gs": 443, "amqp": 5672, "amqps": 5671,
    "kafka": 9092, "clickhouse": 9000, "mssql": 1433, "sqlserver": 1433, "oracle": 1521, "cassandra": 9042,
    "elasticsearch": 9200, "opensearch": 9200, "memcached": 11211, "ftp": 21, "sftp": 22, "ssh": 22, "ldap": 389,
    "ldaps": 636, "grpc": 443, "mqtt": 1883, "trino": 8080, "presto": 8080,
}
LIBPQ_DEFAULT_PORT = 5432
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*"
# a scheme starts where a run of scheme characters starts (tried once per run: linear in a 64 KiB string);
# `nats://a:4222,nats://b:4222` is two URLs
_URL = re.compile(rf"(?<![A-Za-z0-9+.\-])({_SCHEME})://((?:(?!,{_SCHEME}://)\S)*)")
_KEY_VALUE = re.compile(r"(?i)(?:^|[\s;&?])(host|hostaddr|server|port)\s*=\s*('(?:\\.|[^'\\])*'|[^\s;&]*)")
_ADDRESS = r"(?:\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9_.\-]+):\d{1,5}"
_BARE = re.compile(rf"(?:[^\s/]*@)?{_ADDRESS}(?:,{_ADDRESS})*(?:/\S*)?")  # db:5432, b1:9092,b2:9092, h:1521/svc


def default_port(scheme: str) -> int | None:
    """The port a client of `scheme` (a URL scheme or a connection type: `postgresql+psycopg`, `POSTGRES`) uses
    when none is given; None for a scheme not known."""
    return DEFAULT_PORTS.get(scheme.lower().split("+", 1)[0])


def _address_port(text: str) -> tuple[str, int | None] | None:
    """(host, port or None) of `host`, `host:port`, `[v6]:port`, a bare IPv6 address; None without a host."""
    text = text.strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]"))), None
    except ValueError:
        pass
    parsed = urlsplit(f"//{text}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    return (parsed.hostname, port) if parsed.hostname else None


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip().isdigit() and 0 < int(p) < 65536]


def _url_endpoints(scheme: str, rest: str) -> set[tuple[str, int | None]]:
    """The servers a URL names: every host of its authority (`h1:5432,h2:5433`), and libpq's `host`/`hostaddr`/`port`
    query parameters, which a client takes over the authority's (`postgresql://db.example.com/x?host=10.0.0.5`)."""
    parts = urlsplit(f"//{rest}")
    netloc = parts.netloc.rpartition("@")[2].split(";", 1)[0]  # jdbc:sqlserver://host:1433;databaseName=x
    query = parse_qsl(parts.query)
    query_ports = [p for k, v in query if k.lower() == "port" for p in _ports(v)]
    fallback = query_ports or [default_port(scheme)]
    found: set[tuple[str, int | None]] = set()
    own_ports = []
    for piece in netloc.split(","):
        address = _address_port(piece) if piece.strip() else None
        if address is None:
            continue
        host, port = address
        own_ports += [port] if port else []
        found.update((host, p) for p in ({port, *query_ports} if port else fallback))
    for key, value in query:
        if key.lower() in ("host", "hostaddr"):
            for piece in value.split(","):
                address = _address_port(piece) if piece.strip() and not piece.startswith("/") else None
                if address:
                    found.update((address[0], p) for p in ([address[1]] if address[1] else
                                                           query_ports or own_ports or [default_port(scheme)]))
    return found


def _key_value_endpoints(text: str) -> set[tuple[str, int | None]]:
    """The servers of a libpq (`host=db port=5432 dbname=x`, hosts and ports as comma lists paired in order) or
    ADO.NET/Npgsql (`Server=db;Port=5432`, SQL Server's `Server=tcp:db,1433`) connection string."""
    hosts: list[tuple[str, int | None]] = []
    ports: list[int] = []
    for key, value in _KEY_VALUE.findall(text):
        value = re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith("'") and len(value) > 1 else value
        if key.lower() == "port":
            ports += _ports(value)
            continue
        if key.lower() == "server" and (sql_server := re.fullmatch(r"(?:tcp:)?(.+),(\d{1,5})", value.strip())):
            hosts.append((sql_server[1], int(sql_server[2])))
            continue
        for piece in value.split(","):
            address = _address_port(piece) if piece.strip() and not piece.strip().startswith("/") else None
            if address:
                hosts.append(address)
    if not hosts:
        return set()
    found: set[tuple[str, int | None]] = set()
    for i, (host, port) in enumerate(hosts):
        if port:
            found.add((host, port))
        elif len(ports) == len(hosts):
            found.add((host, ports[i]))
        else:
            found.update((host, p) for p in (ports or [LIBPQ_DEFAULT_PORT]))
    return found


def endpoints_in(text: str) -> list[tuple[str, int | None]]:
    """Every (host, port) a string names, as a client library would read it: URLs of any scheme anywhere in it
    (`postgresql://u:p@db:5432/x`, `s3://bucket`, `jdbc:mysql://db/x`, `nats://a,nats://b`), with the scheme's
    default port when none is written (None for an unknown scheme); libpq/ADO key=value connection strings (default
    port 5432); a bare `host:port` or a comma list of them (`broker1:9092,broker2:9092`). Empty for anything else,
    a bare name included (a name alone is a host only where the key says so)."""
    found: set[tuple[str, int | None]] = set()
    for scheme, rest in _URL.findall(text):
        found |= _url_endpoints(scheme, rest)
    found |= _key_value_endpoints(text)
    stripped = text.strip()
    if _BARE.fullmatch(stripped):
        for piece in stripped.rpartition("@")[2].split("/", 1)[0].split(","):
            address = _address_port(piece)
            if address:
                found.add(address)
    return sorted(found, key=lambda endpoint: (endpoint[0], endpoint[1] or 0))


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
        """A server named in a connection's details (any scheme: the platform never fetches it): metadata names and
        link-local addresses are refused always, and with a port the platform's own endpoints, as in `check` (an
        unspecified address, which a client on the machine reaches as loopback, like loopback). Loopback and private
        addresses are otherwise allowed, and a name that does not resolve here is let through: it is stored for the
        tenant's code, not fetched by the platform."""
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
            loopback = ipaddress.ip_address("127.0.0.1" if candidate.version == 4 else "::1")
            if port is not None and (await self._is_platform(candidate, port) or (
                    candidate.is_unspecified and await self._is_platform(loopback, port))):
                raise refused(f"{what}: port {port} there is one of this platform's own servers, which tenants' "
                              "details may not name: give the address of your own server")
