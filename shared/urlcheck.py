"""Outbound URLs chosen by tenants (model registries, connection details) are checked before every use, so that a
tenant cannot make a platform service talk to the platform's own servers or to cloud metadata (SSRF). The rule and
why: docs/security.md, "Tenant URLs" and "Connection details".

The contract here:
- `OutboundRules.check(url)`: a URL a service fetches (registries); a `CheckedUrl` whose `pinned()` request goes to an
  address that was checked, or 400 `url_not_allowed` naming the rule, or 503 `unavailable` when a name could not be
  looked up in time;
- `OutboundRules.check_host(host, port)`: a server named in a connection's details (stored, never fetched), judged
  without DNS (`local_addresses`); refused (400 `url_not_allowed`) only for metadata/link-local or, with a port, the
  platform's own servers;
- `endpoints_in(text)`: every (host, port) a string names as a client library would read it;
- `address_port(text)`, `read_port(text)` and `valid_port(value)`: the one host:port parser, the port reader (what
  clients accept: `+15432`, ` 15432`, `000000015432`) and the port validator (a `port` key's value) every caller uses;
- `platform_endpoints(settings)`: the platform's own servers, read from the settings by the same parsers."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlparse, urlsplit, urlunparse

from shared.errors import InvalidRequest, Unavailable

METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data"}
METADATA_ADDRESSES = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")}
NAT64 = ipaddress.ip_network("64:ff9b::/96")
UNSPECIFIED = frozenset({ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")})
MAX_PORT = 65535
ENDPOINT_CACHE_SECONDS = 60.0
OWN_ADDRESS_CACHE_SECONDS = 10.0
LOOKUP_SLOTS = 4  # tenants' name lookups (registry URLs) at once per event loop (each takes a default-pool thread)
LOOKUP_TIMEOUT_SECONDS = 2.0  # a name not resolved by then could not be checked: 503, never "does not resolve"
HOSTS_FILE = "/etc/hosts"
RESOLV_CONF = "/etc/resolv.conf"  # its `search`/`domain` lines: the names a short name also stands for (no DNS)
REFUSED = "url_not_allowed"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")


def refused(msg: str) -> InvalidRequest:
    """The one error a refused URL gets: 400 `url_not_allowed`."""
    return InvalidRequest(msg, code=REFUSED)


def _unwrapped(address: Address) -> Address:
    """The IPv4 address an IPv6 one carries (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d, 6to4 2002:AABB:CCDD::,
    Teredo's client 2001:0::/32), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return address


def _range_reason(address: Address, private_allowed: bool) -> str | None:
    """Why a service may not fetch from `address`, or None."""
    if address in METADATA_ADDRESSES or address.is_link_local:
        return "link-local and cloud metadata addresses are not allowed"
    if address.is_unspecified or address.is_multicast:
        return "that address cannot be used"
    if address.is_reserved and not (address.is_loopback or address.is_private):  # ::1 (in ::/8) is reserved too
        return "that address cannot be used"
    # loopback, private, shared (100.64/10), documentation..., and deprecated site-local fec0::/10 (is_global to Python)
    if (not address.is_global or getattr(address, "is_site_local", False)) and not private_allowed:
        return ("loopback, private and other non-public addresses are not allowed on this platform"
                " (RAILYARD_REGISTRY__PRIVATE_URLS): use the server's public address")
    return None


def _metadata_reason(address: Address) -> str | None:
    """Why no tenant record may name `address` at all, or None."""
    if address in METADATA_ADDRESSES or address.is_link_local:
        return "link-local and cloud metadata addresses are not allowed"
    return None


def _refreshed(seconds: float) -> Callable[[Callable[[], T]], Callable[[], T]]:
    """A no-argument reader's answer kept for `seconds`, then read again (this machine's interfaces, HOSTS_FILE and
    RESOLV_CONF change rarely and are read on every check); `.cache_clear()` forgets it."""
    def wrap(read: Callable[[], T]) -> Callable[[], T]:
        last: list[Any] = [float("-inf"), None]

        @functools.wraps(read)
        def cached() -> T:
            if time.monotonic() - last[0] >= seconds:
                value = read()
                last[:] = [time.monotonic(), value]
            return last[1]

        cached.cache_clear = lambda: last.__setitem__(0, float("-inf"))  # type: ignore[attr-defined]
        return cached
    return wrap


@_refreshed(OWN_ADDRESS_CACHE_SECONDS)
def own_addresses() -> frozenset[Address]:
    """Every address of this machine's network interfaces (psutil.net_if_addrs: eth0's as well as loopback's), cached
    for OWN_ADDRESS_CACHE_SECONDS. A server bound to 0.0.0.0 or :: answers on each of them, so each is the
    platform's own for its ports; the host name alone may resolve to 127.0.0.1 only."""
    import psutil

    found = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(ipaddress.ip_address(address.address.split("%")[0]))
                except ValueError:
                    pass
    return frozenset(found)


def valid_port(value: Any) -> int:
    """`value` as a TCP port: an int, or a string of ASCII digits, from 1 to 65535; ValueError for anything else (a
    bool, a float, `abc`, 0, 10**30), with a message fit for the caller's 400."""
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,6}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PORT:
        raise ValueError(f"a port must be an integer from 1 to {MAX_PORT}, not {str(value)[:40]!r}")
    return value


def read_port(text: str) -> int | None:
    """A port as the clients read one from connection details: libpq's strtol and asyncpg's int() take surrounding
    whitespace, a `+`, leading zeros (and int() `_` between digits and any Unicode digit): `+15432`, ` 15432`,
    `000000015432` are port 15432. None for anything else or a number outside 1-65535. For READING what a string
    names; a `port` key's own value is validated by `valid_port`."""
    if not isinstance(text, str) or not re.fullmatch(r"\s*\+?\d+(?:_\d+)*\s*", text):
        return None
    try:
        port = int(text)
    except ValueError:
        return None
    return port if 0 < port <= MAX_PORT else None


def _platform_refusal(what: str, port: int, may_not: str) -> InvalidRequest:
    """The one refusal for a server that is one of the platform's own (`may_not`: what tenants' records may not)."""
    return refused(f"{what}: port {port} there is one of this platform's own servers, which tenants' {may_not}:"
                   " give the address of your own server")


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
# whose userinfo clients read up to the first or the last `@` ahead of the first `/` (`_url_endpoints`)
POSTGRES_SCHEMES = {"postgres", "postgresql", "pgsql", "redshift", "cockroachdb"}
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*"
# a scheme starts where a run of scheme characters starts (tried once per run: linear in a 64 KiB string);
# `nats://a:4222,nats://b:4222` is two URLs
# a port may follow its `:` after spaces (`h: 15432`: libpq's strtol and asyncpg's int() skip them)
_URL = re.compile(rf"(?<![A-Za-z0-9+.\-])({_SCHEME})://((?:(?!,{_SCHEME}://)(?:\S|(?<=:)\s+(?=\+?\d)))*)")
# libpq's host/hostaddr/port; ADO.NET's (SQL Server, Npgsql, MySQL) Server, Data Source, Address, Addr, Network Address
_KEY_VALUE = re.compile(r"(?i)(?:^|[\s;&?])(host|hostaddr|server|data\s+source|network\s+address|address|addr|port)"
                        r"\s*=\s*('(?:\\.|[^'\\])*'|[^\s;&]*)")
_SQL_SERVER_KEYS = {"server", "data source", "network address", "address", "addr"}
_ADDRESS = r"(?:\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9_.\-]+):\+?\d+"
_BARE = re.compile(rf"(?:[^\s/]*@)?{_ADDRESS}(?:,{_ADDRESS})*(?:/\S*)?")  # db:5432, b1:9092,b2:9092, h:1521/svc


def default_port(scheme: str) -> int | None:
    """The port a client of `scheme` (a URL scheme or a connection type: `postgresql+psycopg`, `POSTGRES`) uses
    when none is given; None for a scheme not known."""
    return DEFAULT_PORTS.get(scheme.lower().split("+", 1)[0])


def address_port(text: str) -> tuple[str, int | None] | None:
    """(host, port or None) of `host`, `host:port`, `[v6]:port`, a bare IPv6 address, with any `user:pass@` dropped
    and the host percent-decoded and lower-cased (`%6c%6fcalhost` is `localhost` to libpq); None without a host. A
    port that is not one (`h:0`, `h:99999`, `h:x`) is read as none. ValueError for text that is no host at all (an
    unbalanced `[`/`]`, a name that changes under NFKC normalisation: what Python's URL parser refuses)."""
    text = text.strip().rpartition("@")[2]
    if text.startswith("["):  # by hand: Python takes `::1%1]:5432` for an address with the zone `1]:5432`
        inside, closed, after = text[1:].partition("]")
        if not closed or (after and not after.startswith(":")):
            raise ValueError("not a host")
        host = _literal(unquote(inside))
        if host is None and re.fullmatch(r"[A-Za-z0-9_.\-]+", unquote(inside)):
            host = unquote(inside).lower()
        if host is None:
            raise ValueError("not a host")
        return host, read_port(after[1:])
    if ":" in text and "[" not in text and "]" not in text and (bare := _literal(unquote(text))):
        return bare, None  # a bare IPv6 address (`::1`, `fe80::1%eth0`)
    parsed = urlsplit(f"//{text}")
    _, colon, port_text = parsed.netloc.rpartition("@")[2].rpartition(":")
    port = read_port(port_text) if colon else None  # `h:+15432`, `h: 15432`, `h:000000015432` (not urlsplit's)
    host = unquote(parsed.hostname or "").strip().lower()
    return (host, port) if host else None


def _literal(text: str) -> str | None:
    """`text` as an IP address literal (IPv4 or IPv6, a zone dropped), or None; a zone holding `]`, `:` or `/` (the
    rest of a URL, not a zone) makes it none."""
    address, percent, zone = text.strip().partition("%")
    if percent and (not zone or re.search(r"[\]:/\[]", zone)):
        return None
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def _ports(text: str) -> list[int]:
    """The ports of a comma list (`5432,+15432`) as clients read them (`read_port`); anything else is skipped."""
    return [port for piece in text.split(",") if (port := read_port(piece)) is not None]


def _piece(text: str, strict: bool) -> tuple[str, int | None] | None:
    """`address_port(text)`; a piece that is no host at all raises ValueError if `strict`, else names nothing."""
    try:
        return address_port(text)
    except ValueError:
        if strict:
            raise
        return None


def _url_endpoints(scheme: str, rest: str, strict: bool = False) -> set[tuple[str, int | None]]:
    """`_authority_endpoints`; for PostgreSQL's schemes every reading of the userinfo: a URL parser's (up to the last
    `@` ahead of the first `/`, `?` or `#`), and, since clients disagree (libpq and asyncpg take it up to the FIRST
    `@` ahead of the first `/`, SQLAlchemy up to the last: a password may hold `?`, `#`, `@`), the host list after
    the first and after the last `@` ahead of the first `/` (`//u@127.0.0.1:5432,x@y/db` names 127.0.0.1:5432 to
    libpq, y to SQLAlchemy; `//?host=h&x=a@b` too). Only those two: reading after every `@` was quadratic in the
    URL's length (a 64 KiB run of `@` held the registry's event loop for 6 s)."""
    head = rest.split("/", 1)[0]
    found = _authority_endpoints(scheme, rest, strict)
    if scheme.lower().split("+", 1)[0] in POSTGRES_SCHEMES and "@" in head:
        for at in {head.index("@"), head.rindex("@")}:
            found |= _authority_endpoints(scheme, rest[at + 1:], strict, userinfo=False)
    return found


def _authority_endpoints(scheme: str, rest: str, strict: bool = False,
                         userinfo: bool = True) -> set[tuple[str, int | None]]:
    """The servers a URL names: every host of its authority (`h1:5432,h2:5433`), and libpq's `host`/`hostaddr`/`port`
    query parameters, which a client takes over the authority's (`postgresql://db.example.com/x?host=10.0.0.5`).
    `userinfo`: the authority may start with one (dropped up to its last `@`); else `rest` starts at the host list,
    whose every piece is read as a host (what follows a `@` in it is)."""
    # split by hand, not by urlsplit, which refuses the whole URL for one bad host (`[x,127.0.0.1:4222`)
    netloc, tail = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL).groups()  # type: ignore[union-attr]
    netloc = (netloc.rpartition("@")[2] if userinfo else netloc).split(";", 1)[0]  # jdbc:sqlserver://h:1433;db=x
    query = parse_qsl(tail.partition("?")[2].partition("#")[0]) if "?" in tail.partition("#")[0] else []
    query_ports = [p for k, v in query if k.lower() == "port" for p in _ports(v)]
    fallback = query_ports or [default_port(scheme)]
    found: set[tuple[str, int | None]] = set()
    own_ports = []
    for piece in netloc.split(","):
        address = _piece(piece, strict) if piece.strip() else None
        if address is None:
            continue
        host, port = address
        own_ports += [port] if port else []
        found.update((host, p) for p in ({port, *query_ports} if port else fallback))
    for key, value in query:
        if key.lower() in ("host", "hostaddr"):
            for piece in value.split(","):
                address = _piece(piece, strict) if piece.strip() and not piece.startswith("/") else None
                if address:
                    found.update((address[0], p) for p in ([address[1]] if address[1] else
                                                           query_ports or own_ports or [default_port(scheme)]))
    return found


def _key_value_endpoints(text: str, strict: bool = False) -> set[tuple[str, int | None]]:
    """The servers of a libpq (`host=db port=5432 dbname=x`, hosts and ports as comma lists paired in order) or
    ADO.NET (`Server=db;Port=5432`, SQL Server's `Server=tcp:db,1433`, `Data Source=db,1433`, `Address=db;Port=1433`,
    `Addr`, `Network Address`) connection string."""
    hosts: list[tuple[str, int | None]] = []
    ports: list[int] = []
    for key, value in _KEY_VALUE.findall(text):
        value = re.sub(r"\\(.)", r"\1", value[1:-1]) if value.startswith("'") and len(value) > 1 else value
        if key.lower() == "port":
            ports += _ports(value)
            continue
        key = re.sub(r"\s+", " ", key.lower())
        sql_server = re.fullmatch(r"(?:tcp:)?([^,]+),(\s*\+?\d+(?:_\d+)*)", value.strip())
        if key in _SQL_SERVER_KEYS and sql_server:
            host = _piece(sql_server[1].split("\\", 1)[0], strict)  # `tcp:host\instance,port`
            if host:
                hosts.append((host[0], next(iter(_ports(sql_server[2])), host[1])))
            continue
        for piece in value.split(","):
            address = _piece(piece, strict) if piece.strip() and not piece.strip().startswith("/") else None
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


def endpoints_in(text: str, strict: bool = False) -> list[tuple[str, int | None]]:
    """Every (host, port) a string names, as a client library would read it: URLs of any scheme anywhere in it
    (`postgresql://u:p@db:5432/x`, `s3://bucket`, `jdbc:mysql://db/x`, `nats://a,nats://b`), with the scheme's
    default port when none is written (None for an unknown scheme); libpq/ADO key=value connection strings (default
    port 5432); a bare `host:port` or a comma list of them (`broker1:9092,broker2:9092`). Empty for anything else,
    a bare name included (a name alone is a host only where the key says so). A host Python's parser refuses
    (`https://[internal/page`, `http://℀.example/`) names nothing (free text says such things), or, if `strict`
    (a host-like key), raises ValueError."""
    found: set[tuple[str, int | None]] = set()
    for scheme, rest in _URL.findall(text):
        found |= _url_endpoints(scheme, rest, strict)
    found |= _key_value_endpoints(text, strict)
    stripped = text.strip()
    if _BARE.fullmatch(stripped):
        for piece in stripped.rpartition("@")[2].split("/", 1)[0].split(","):
            address = _piece(piece, strict)
            if address:
                found.add(address)
    return sorted(found, key=lambda endpoint: (endpoint[0], endpoint[1] or 0))


def platform_endpoints(settings: Any) -> frozenset[tuple[str, int]]:
    """The platform's own servers as (host, port), from the settings every service reads: the bus, the database,
    object storage, the gateway, and the embedded stack's ports (SeaweedFS's HTTP and gRPC ports included)."""
    from shared.embedded.servers import GRPC_OFFSET  # a constant; the module starts nothing when imported

    def servers(text: str, default: int) -> set[tuple[str, int]]:
        named = endpoints_in(text)
        if not named and "=" not in text and "/" not in text:  # `host=/var/run/postgresql port=5432`: no TCP server
            named = [address for address in [address_port(text)] if address]
        return {(host, port or default) for host, port in named}

    found = servers(settings.nats.url, DEFAULT_PORTS["nats"])  # nats://a:4222,nats://b:4222
    found |= servers(settings.postgres.dsn, LIBPQ_DEFAULT_PORT)  # h1:5432,h2:5433, ?host=, key=value
    found |= servers(settings.s3.endpoint, 443 if settings.s3.secure else 80)
    found.add((settings.gateway.host, settings.gateway.port))
    stack = settings.stack
    ports = [stack.nats_port, stack.nats_monitor_port, stack.postgres_port, getattr(stack, "nats_prof_port", 0)]
    for port in (stack.s3_port, stack.weed_master_port, stack.weed_volume_port, stack.weed_filer_port):
        ports += [port, port + GRPC_OFFSET]
    found.update((stack.host, port) for port in ports if port)
    return frozenset(found)


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


LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
@_refreshed(OWN_ADDRESS_CACHE_SECONDS)
def _hosts() -> dict[str, frozenset[Address]]:
    """HOSTS_FILE's names (aliases included, lower-case) -> their addresses, cached for OWN_ADDRESS_CACHE_SECONDS;
    empty if it cannot be read. Reading it is local: no resolver."""
    found: dict[str, set[Address]] = {}
    try:
        with open(HOSTS_FILE, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields = line.partition("#")[0].split()
                literal = _literal(fields[0]) if fields else None
                for name in fields[1:] if literal else ():
                    found.setdefault(name.lower().rstrip("."), set()).add(ipaddress.ip_address(literal))
    except OSError:
        pass
    return {name: frozenset(addresses) for name, addresses in found.items()}


@_refreshed(OWN_ADDRESS_CACHE_SECONDS)
def search_domains() -> tuple[str, ...]:
    """RESOLV_CONF's search domains (`search` and `domain` lines, lower-case), cached for OWN_ADDRESS_CACHE_SECONDS;
    empty if it cannot be read. In Kubernetes they make `postgres`, `postgres.railyard` and
    `postgres.railyard.svc.cluster.local` one server."""
    found: dict[str, None] = {}
    try:
        with open(RESOLV_CONF, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields = re.split(r"[#;]", line, maxsplit=1)[0].split()
                if fields and fields[0] in ("search", "domain"):
                    found.update(dict.fromkeys(d.lower().strip(".") for d in fields[1:] if d.strip(".")))
    except OSError:
        pass
    return tuple(found)


def name_forms(host: str) -> set[str]:
    """The fully qualified names `host` may stand for, read locally: itself (lower-case, no trailing dot) and itself
    followed by each of RESOLV_CONF's search domains. Two names stand for one server when their forms meet."""
    name = host.strip().lower().rstrip(".")
    return {name, *(f"{name}.{domain}" for domain in search_domains())} if name else set()


def local_addresses(host: str) -> tuple[Address, ...] | None:
    """The addresses `host` stands for, judged on this machine alone (never the resolver): an IP literal (bracketed,
    with a zone, or in any form inet_aton reads: `127.1`, `2130706433`, `0x7f.1`); `localhost` and `*.localhost`
    (loopback); this machine's host name (its interfaces' addresses but link-local ones, and loopback); a name in
    HOSTS_FILE (its addresses there). None for a name only DNS could answer."""
    name = host.strip().lower().rstrip(".")
    name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    literal = _literal(name)
    if literal is not None:
        return (ipaddress.ip_address(literal),)
    if re.fullmatch(r"[0-9a-fx.]+", name):  # what a C client's inet_aton reads as IPv4
        try:
            return (ipaddress.IPv4Address(socket.inet_aton(name)),)
        except OSError:
            pass
    found: dict[Address, None] = {}
    if name == "localhost" or name.endswith(".localhost"):
        found.update(dict.fromkeys(LOOPBACK))
    if name and name in (socket.gethostname().lower(), socket.gethostname().lower().partition(".")[0]):
        mine = sorted((a for a in own_addresses() if not a.is_link_local), key=str)  # fe80:: is no metadata
        found.update(dict.fromkeys((*LOOPBACK, *mine)))
    found.update(dict.fromkeys(sorted(_hosts().get(name, ()), key=str)))
    return tuple(found) or None


@dataclass
class _Lookup:
    """One platform endpoint's name: its last good addresses (and when), and the lookup under way, if any."""

    addresses: frozenset[Address] = frozenset()
    at: float = float("-inf")
    pending: asyncio.Future[Any] | None = None

    def store(self, done: asyncio.Future[Any]) -> None:
        """Keep a finished lookup's answer if it is a good one (a failure keeps the last good answer)."""
        if done.cancelled() or done.exception() is not None:
            return
        try:
            addresses = frozenset(ipaddress.ip_address(info[4][0].split("%")[0]) for info in done.result())
        except (TypeError, IndexError, ValueError):
            return
        if addresses:
            self.addresses, self.at = addresses, time.monotonic()


@dataclass
class OutboundRules:
    """What a platform service may fetch for a tenant: never link-local/metadata or the platform's own endpoints,
    loopback and private ranges only when `private_allowed`."""

    private_allowed: bool
    platform: frozenset[tuple[str, int]] = frozenset()
    _resolved: dict[str, _Lookup] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Any) -> OutboundRules:
        """The rules of this deployment: RAILYARD_REGISTRY__PRIVATE_URLS (unset: development mode only) and the
        endpoints in the settings."""
        private = settings.registry.private_urls
        return cls(private_allowed=settings.env == "development" if private is None else private,
                   platform=platform_endpoints(settings))

    async def _addresses(self, host: str) -> frozenset[Address]:
        """The addresses of one of the platform's own endpoints: judged locally when it can be (`local_addresses`),
        else resolved outside the tenants' lookup slots, one lookup per name at a time, and cached for
        ENDPOINT_CACHE_SECONDS. A lookup's answer is kept when it arrives, even after its waiters gave up (a resolver
        slower than LOOKUP_TIMEOUT_SECONDS still resolves the name); while a refresh is under way, or when it fails,
        the last good answer is used at once. Only a name that has never resolved is waited for (up to
        LOOKUP_TIMEOUT_SECONDS), and if it still has no answer it cannot be matched: 503 `unavailable` (fail closed;
        nothing is allowed meanwhile)."""
        local = local_addresses(host)
        if local is not None:
            return frozenset(local)
        entry = self._resolved.setdefault(host, _Lookup())
        if time.monotonic() - entry.at < ENDPOINT_CACHE_SECONDS:
            return entry.addresses
        loop = asyncio.get_running_loop()
        if entry.pending is None or entry.pending.done() or entry.pending.get_loop() is not loop:
            entry.pending = asyncio.ensure_future(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM))
            entry.pending.add_done_callback(entry.store)  # a lookup that outlives its waiters still counts
        if entry.addresses:  # a refresh is under way: the last good answer meanwhile, at once
            return entry.addresses
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                await asyncio.shield(entry.pending)
        except (OSError, UnicodeError, ValueError):  # TimeoutError is an OSError
            pass
        if entry.pending.done():
            entry.store(entry.pending)
        if not entry.addresses:
            raise Unavailable(f"could not check against this platform's server {host!r} now; retry")
        return entry.addresses

    async def _is_platform(self, address: Address, port: int) -> bool:
        """Does (address, port) reach one of the platform's own servers? (An unspecified address, which a client on
        the machine reaches as loopback, is judged as loopback.)"""
        if address.is_unspecified:
            address = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
        for host, endpoint_port in self.platform:
            if endpoint_port != port:
                continue
            for bound in await self._addresses(host):
                if bound == address or (bound.is_loopback and address.is_loopback):
                    return True
                if bound.is_unspecified and (address.is_loopback or address in own_addresses()):
                    return True
        return False

    async def _check_addresses(self, addresses: tuple[Address, ...], port: int | None, what: str, *,
                               fetched: bool) -> None:
        """Refuse the first address (or the IPv4 one it carries, judged first) that is not allowed: by its range
        (`fetched`: what a service fetches, `_range_reason`; else metadata and link-local only), then with a port
        by being one of the platform's own servers."""
        for address in addresses:
            for candidate in dict.fromkeys((_unwrapped(address), address)):
                reason = (_range_reason(candidate, self.private_allowed) if fetched
                          else _metadata_reason(candidate))
                if reason:
                    raise refused(f"{what}: {reason}")
                if port is not None and await self._is_platform(candidate, port):
                    raise _platform_refusal(what, port, "URLs may not reach" if fetched else "details may not name")

    async def check(self, url: str, what: str = "url", caller: str | None = None) -> CheckedUrl:
        """The URL and the address to fetch it from, if it may be fetched now; 400 `url_not_allowed` naming the
        rule otherwise (nothing is fetched); 503 `unavailable` when the host could not be looked up in time.
        `caller` (the user asking) gets at most one name lookup at a time (`_getaddrinfo`): give it for every
        tenant's request."""
        try:
            parsed = urlparse(url)
            host = parsed.hostname
        except ValueError:  # an unbalanced `[`, a host that changes under NFKC normalisation
            raise refused(f"{what} is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise refused(f"{what} must be an http or https URL")
        if not host:
            raise refused(f"{what} has no host")
        _refuse_metadata_name(host, what)
        try:
            port = valid_port(parsed.port) if parsed.port is not None else (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise refused(f"{what} has an invalid port") from None
        try:
            addresses = await _resolve(host, port, caller)
        except TimeoutError:
            raise Unavailable(f"could not check host {host!r} now; retry") from None
        if addresses is None:
            raise refused(f"{what}: the host {host!r} does not resolve")
        await self._check_addresses(addresses, port, f"{what} ({host})", fetched=True)
        return CheckedUrl(url=url, host=host, addresses=addresses)

    async def check_host(self, host: str, port: int | None = None, what: str = "host") -> None:
        """A server named in a connection's details (any scheme: the platform never connects to it, and the tenant's
        code that does runs where the only network is the gateway), judged without DNS: metadata names and
        link-local addresses are refused always, and with a port the platform's own endpoints, by address when
        `local_addresses` can tell it and by name otherwise, with RESOLV_CONF's search domains (`name_forms`:
        `postgres.railyard:5432` is the platform's `postgres:5432` in Kubernetes). Loopback and private addresses are
        allowed, and a name only DNS could answer is stored as written. `port` must be a valid port (`valid_port`)
        or None."""
        _refuse_metadata_name(host, what)
        port = valid_port(port) if port is not None else None
        forms = name_forms(host)
        if port is not None and any(port == p and forms & name_forms(h) for h, p in self.platform):
            raise _platform_refusal(what, port, "details may not name")
        await self._check_addresses(local_addresses(host) or (), port, what, fetched=False)


def _refuse_metadata_name(host: str, what: str) -> None:
    if host.strip().lower().rstrip(".") in METADATA_HOSTS:
        raise refused(f"{what}: cloud metadata hosts are not allowed")


async def _resolve(host: str, port: int | None, caller: str | None = None) -> tuple[Address, ...] | None:
    """The addresses `host` (a name or an address literal, `[v6]` too) stands for, in the resolver's order of
    preference; None if it does not resolve; TimeoutError if the resolver did not answer in time (`caller`: whose
    lookup it is, `_getaddrinfo`)."""
    literal = _literal(host.strip("[]"))  # a zone (`fe80::1%eth0`) changes nothing
    if literal is not None:
        return (ipaddress.ip_address(literal),)
    try:
        infos = await _getaddrinfo(host, port, caller)
        return tuple(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos)) or None
    except TimeoutError:
        raise
    except socket.gaierror as error:
        if error.errno == socket.EAI_AGAIN:  # a temporary failure: not an answer
            raise TimeoutError from None
        return None
    except (OSError, UnicodeError, ValueError):
        return None


_lookup_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


@dataclass
class _Turn:
    """One caller's turn at the lookup slots: its lock, and how many of its calls hold or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


_caller_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Turn]] = weakref.WeakKeyDictionary()


async def _getaddrinfo(host: str, port: int | None, caller: str | None = None) -> list[Any]:
    """The resolver's answer for a tenant's `host`; TimeoutError when it takes over LOOKUP_TIMEOUT_SECONDS (waiting
    for a slot included). At most LOOKUP_SLOTS lookups per event loop run at once (each holds a thread of the default
    pool until the resolver answers, a timed-out one too), and at most one per `caller` (a user): a caller's second
    lookup waits for its first to be answered before it takes a slot, so one tenant's never-answering names hold one
    slot, not all of them. The platform's own names do not take these slots (`OutboundRules._addresses`)."""
    loop = asyncio.get_running_loop()
    slots = _lookup_slots.setdefault(loop, asyncio.Semaphore(LOOKUP_SLOTS))
    turns = _caller_turns.setdefault(loop, {})
    turn = turns.setdefault(caller, _Turn()) if caller is not None else None
    held: list[asyncio.Lock | asyncio.Semaphore] = []

    def release() -> None:
        for each in reversed(held):
            each.release()
        held.clear()
        if turn is not None:
            turn.users -= 1
            if not turn.users and turns.get(caller) is turn:  # type: ignore[arg-type]
                del turns[caller]  # type: ignore[arg-type]

    if turn is not None:
        turn.users += 1
    deadline = loop.time() + LOOKUP_TIMEOUT_SECONDS
    try:
        async with asyncio.timeout_at(deadline):
            if turn is not None:
                await turn.lock.acquire()
                held.append(turn.lock)
            await slots.acquire()
            held.append(slots)
        lookup = asyncio.ensure_future(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except BaseException:
        release()
        raise
    lookup.add_done_callback(lambda done: (release(), done.cancelled() or done.exception()))
    async with asyncio.timeout_at(deadline):
        return await asyncio.shield(lookup)
