"""A connection's details may not name the platform's own servers, in whatever form a client library would read:
a URL of any scheme (postgresql, nats, s3, mysql, redis, mongodb, jdbc:...), a libpq or ADO key=value connection
string, a bare `host:port` (or a list of them), `host` with its `port`, at any depth of the details. Before, only
top-level `url`/`uri`/`endpoint`/`host` keys were looked at: a `dsn`, a nested dict or a `postgresql://` URL named the
stack's PostgreSQL unchecked, and `postgresql://` under `url` was refused as "must be http or https"."""

from __future__ import annotations

import asyncio
import functools
import re
import socket

import pytest

from services.registry.connections import MAX_SERVERS, _check_details
from shared.errors import InvalidRequest
from shared.settings import Settings
from shared.urlcheck import OutboundRules, address_port, platform_endpoints, valid_port

# the development stack's ports (PostgreSQL, S3, NATS) on loopback
RULES = OutboundRules(private_allowed=True, platform=frozenset({("127.0.0.1", 15432), ("127.0.0.1", 18333),
                                                                ("127.0.0.1", 14222)}))
# a deployment on the servers' default ports, to see a scheme's default port used when none is written
DEFAULTS = OutboundRules(private_allowed=True, platform=frozenset({("127.0.0.1", 5432), ("127.0.0.1", 4222),
                                                                   ("127.0.0.1", 443)}))


@pytest.mark.parametrize("details", [
    {"host": "127.0.0.1:15432"}, {"host": "localhost:15432", "port": 5432}, {"host": "[::1]:18333"},
    {"endpoint": "127.0.0.1:18333"}, {"Endpoint": "localhost:18333"}, {"host": "127.0.0.1", "port": 15432},
    {"username": "127.0.0.1:15432"},  # kept before: only host-like keys were read
    # URLs of any scheme, under any key
    {"url": "postgresql://railyard:pw@127.0.0.1:15432/railyard"}, {"dsn": "postgres://u@localhost:15432/x"},
    {"connection_string": "postgresql+psycopg://u:p@ss@127.0.0.1:15432/x?sslmode=disable"},
    {"dsn": "postgresql://db.example.com/x?host=127.0.0.1&port=15432"},  # libpq's query parameters win
    {"dsn": "postgresql://localhost/x?port=15432"},
    {"dsn": "postgresql://db.example.com:5432,127.0.0.1:15432/x"},  # libpq's host list
    {"servers": "nats://db.example.com:4222,nats://127.0.0.1:14222"}, {"url": "nats://[::ffff:127.0.0.1]:14222"},
    {"bucket_url": "s3://127.0.0.1:18333/railyard-artifacts"}, {"jdbc": "jdbc:postgresql://localhost:15432/x"},
    {"cache": "redis://:pw@127.0.0.1:15432/0"}, {"uri": "mongodb://127.0.0.2:14222/x"},
    # key=value connection strings
    {"dsn": "host=127.0.0.1 port=15432 dbname=railyard"}, {"dsn": "host='localhost' port = 15432"},
    {"dsn": "host=db.example.com,127.0.0.1 port=5432,15432"}, {"conn": "Server=127.0.0.1;Port=15432;Database=x"},
    # bare host:port and lists of them, nested anywhere; an unspecified address reaches loopback
    {"brokers": "db.example.com:9092,localhost:14222"}, {"brokers": ["db.example.com:9092", "localhost:14222"]},
    {"options": {"replicas": [{"host": "127.0.0.1", "port": "15432"}]}}, {"a": {"b": {"c": "0.0.0.0:15432"}}},
    # IPv4 as inet_aton reads it (a C client does), parsed here, never by the resolver
    {"host": "127.1", "port": 15432}, {"host": "2130706433:15432"}, {"dsn": "postgresql://u@0x7f.1:15432/x"},
    {"host": "0177.0.0.1", "port": 15432}, {"host": "127.0.0.1.", "port": 15432},
    # local names: *.localhost, this machine's name, /etc/hosts
    {"host": "db.localhost:15432"}, {"host": socket.gethostname(), "port": 15432},
    # an IPv6 zone id does not swallow the port (`%1]:15432` was read as the zone; checked on 5432 only)
    {"dsn": "postgresql://u@[::ffff:127.0.0.1%251]:15432/db"}, {"host": "[::ffff:127.0.0.1%1]:15432"},
    # bracketed IPv4 in free text (Python's URL parser raised, and the value was stored unchecked)
    {"dsn": "postgresql://[127.0.0.1]:15432/db"}, {"notes": "nats://[127.0.0.1]:14222"},
    {"brokers": "[127.0.0.1]:14222"}, {"host": "[127.0.0.1]", "port": 15432},
    # a PostgreSQL password holding `?`, `#` or `@` (read as the host `u` before)
    {"dsn": "postgresql://u:p?x@127.0.0.1:15432/db"}, {"dsn": "postgresql+psycopg://u:p#x@localhost:15432/db"},
    {"dsn": "jdbc:postgresql://u:a@b?c@127.0.0.1:15432"},
    {"dsn": "postgresql://?host=127.0.0.1&port=15432&options=a@b"},  # both readings are checked
    # libpq and asyncpg end the userinfo at the FIRST `@` (only `y` was checked)
    {"dsn": "postgresql://u@127.0.0.1:15432,x@y/db"}, {"dsn": "postgres://u@p@localhost:15432,a@b:5432/db"},
    {"dsn": "postgresql+asyncpg://u@127.0.0.1:15432,x@y@z/db"},
    # ports as libpq's strtol and asyncpg's int() read them (each was "no port": checked on 5432 only)
    {"dsn": "postgresql://u@127.0.0.1:+15432/db"}, {"dsn": "postgresql://u@127.0.0.1: 15432/db"},
    {"dsn": "postgresql://127.0.0.1:000000015432/db"}, {"dsn": "postgresql://[::1]:+15432/db"},
    {"dsn": "host=127.0.0.1 port=+15432"}, {"dsn": "host=127.0.0.1 port=' 15432'"},
    {"dsn": "postgresql://db.example.com/x?host=127.0.0.1&port=000000015432"},
    {"dsn": "postgresql://127.0.0.1/x?port=%2B15432"}, {"brokers": "127.0.0.1:000000015432"},
    {"conn": "Server=127.0.0.1,+15432;Database=x"}, {"dsn": "postgresql://127.0.0.1:1_5432/db"},
])
async def test_every_form_naming_a_platform_server_is_refused(details):
    with pytest.raises(InvalidRequest, match="this platform's own servers") as refused:
        await _check_details(details, RULES)
    assert refused.value.code == "url_not_allowed"


@pytest.mark.parametrize("details, kind", [
    ({"url": "postgresql://u@127.0.0.1/x"}, ""), ({"url": "nats://localhost"}, ""), ({"dsn": "host=localhost"}, ""),
    ({"url": "https://127.0.0.1/x"}, ""), ({"url": "s3://localhost/bucket"}, ""),
    ({"host": "127.0.0.1"}, "POSTGRES"), ({"hosts": ["localhost"]}, "nats"),  # the type's default port
])
async def test_a_scheme_or_types_default_port_is_checked_when_none_is_written(details, kind):
    with pytest.raises(InvalidRequest, match="this platform's own servers"):
        await _check_details(details, DEFAULTS, kind)


async def test_a_hosts_port_is_checked_on_the_deployments_settings():
    """`check_host` on the rules every service builds from its settings (the embedded stack's defaults): a tenant's
    PostgreSQL on the default port and a name that does not resolve here are kept; the stack's ports and metadata are
    not."""
    rules = OutboundRules.from_settings(Settings(env="development"))
    await rules.check_host("127.0.0.1", 5432)
    await rules.check_host("db.invalid", 15432)
    for host, port in (("127.0.0.1", 15432), ("localhost", 14222), ("169.254.169.254", None)):
        with pytest.raises(InvalidRequest) as refused:
            await rules.check_host(host, port)
        assert refused.value.code == "url_not_allowed"


@pytest.mark.parametrize("details, path", [
    ({"host": "localhost", "port": 10**30}, "details.port"),  # OverflowError in getaddrinfo: a 500 before
    ({"host": "localhost", "port": 1.5e300}, "details.port"), ({"host": "localhost", "port": 15432.0}, "details.port"),
    ({"host": "localhost", "port": -1}, "details.port"), ({"host": "localhost", "port": 0}, "details.port"),
    ({"host": "localhost", "port": 65536}, "details.port"), ({"host": "localhost", "Port": "abc"}, "details.Port"),
    ({"host": "localhost", "port": True}, "details.port"), ({"host": "localhost", "port": [15432]}, "details.port"),
    ({"a": [{"host": "localhost", "port": "15432x"}]}, r"details.a\[0\].port"),  # skipped silently before
])
async def test_a_port_that_is_not_one_is_refused_naming_the_key_path(details, path):
    with pytest.raises(InvalidRequest, match=f"^{path}: a port must be an integer from 1 to 65535") as refused:
        await _check_details(details, RULES)
    assert refused.value.code == "invalid_request"


@pytest.mark.parametrize("details", [
    {"dsn": "postgresql://%6c%6fcalhost:15432/x"}, {"url": "nats://%31%32%37.0.0.1:14222"},  # percent-encoded host
    {"host": "%6C%6Fcalhost", "port": 15432},
    # SQL Server / ADO.NET key names
    {"conn": "Data Source=127.0.0.1,15432;Initial Catalog=x"}, {"conn": "Data Source=tcp:localhost\\SQL,14222"},
    {"conn": "Address=127.0.0.1;Port=15432"}, {"conn": "Addr=localhost;Port=15432"},
    {"conn": "Network Address=127.0.0.1,18333;Database=x"}, {"conn": "Server=localhost,15432"},
])
async def test_encoded_hosts_and_sql_server_keys_are_read(details):
    with pytest.raises(InvalidRequest, match="this platform's own servers"):
        await _check_details(details, RULES)


async def test_the_message_names_the_key_path():
    details = {"type": "x", "options": {"replicas": [{"dsn": "ok"}, {"dsn": "postgresql://localhost:15432/x"}]}}
    with pytest.raises(InvalidRequest, match=r"^details\.options\.replicas\[1\]\.dsn \(localhost\): port 15432"):
        await _check_details(details, RULES)


@pytest.mark.parametrize("details", [
    {"host": "127.0.0.1:5432"}, {"host": "db.invalid:15432"}, {"endpoint": "127.0.0.1:9000"}, {"host": "::1"},
    {"host": "10.0.0.5", "port": 5432}, {"endpoint": "s3.invalid"}, {"username": "admin", "note": "12:30"},
    # a customer's own servers, in every form: no longer "must be http or https"
    {"url": "postgresql://u:p@10.0.0.5:5432/sales"}, {"dsn": "postgres://u@127.0.0.1/x"},
    {"dsn": "host=10.0.0.5 port=5432 dbname=sales"}, {"bucket": "s3://customer-bucket/prefix"},
    {"servers": "nats://10.0.0.7:4222,nats://10.0.0.8:4222"}, {"url": "mysql://u@127.0.0.1:3306/x"},
    {"nested": {"uri": "mongodb://10.0.0.9/x", "list": ["redis://10.0.0.10", "b1:9092,b2:9092"]}},
    {"url": "ftp://files.example.com/x"}, {"host": "127.0.0.1"},  # no port, no known type: a tenant's own
    {"host": socket.gethostname()},  # this machine: its interfaces' link-local fe80:: addresses are no metadata
])
async def test_a_tenants_own_servers_are_kept(details):
    await _check_details(details, RULES)


@pytest.mark.parametrize("details", [
    {"description": "Our wiki: https://[internal/page"}, {"dsn": "postgresql://[::1/x"},
    {"note": "http://\u2100.example/"}, {"dsn": "host=a]b port=5432"}, {"x": "a]b:5432"},
])
async def test_text_pythons_url_parser_refuses_names_no_host_in_free_text(details):
    """urlsplit raises ValueError on an unbalanced bracket or a host that changes under NFKC: that was a 500. Only
    text that is no host at all names nothing: a bracketed address is read by hand (see the bracketed IPv4 cases in
    `test_every_form_naming_a_platform_server_is_refused`, stored unchecked before)."""
    await _check_details(details, RULES)
    for text in ("Our wiki: https://[127.0.0.1]:15432/page", "postgresql://[127.0.0.1]:15432/x [x"):
        with pytest.raises(InvalidRequest, match="this platform's own servers"):
            await _check_details({"note": text}, RULES)


@pytest.mark.parametrize("host", ["[::1%1]]:5432", "[::1%1:15432]", "[::1%a/b]:15432"])
def test_a_zone_holding_a_bracket_colon_or_slash_is_no_host(host):
    with pytest.raises(ValueError):
        address_port(host)


async def test_connection_details_never_ask_the_resolver(monkeypatch):
    """The platform never connects to a connection's details (the tenant's code uses them in a sandbox whose only
    network is the gateway), so nothing is resolved: 64 names used to start up to 64 lookups through the slots the
    registry's URL checks and the platform's own names also needed, and a lookup that timed out let its value
    through unchecked. A name only DNS could answer is stored as written; one the platform's settings name is
    matched by name."""
    loop = asyncio.get_running_loop()

    async def resolve(*args, **kwargs):
        raise AssertionError(f"resolver asked for {args}")

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    await _check_details({"hosts": [f"h{i}.example.com:15432" for i in range(MAX_SERVERS)]}, RULES)
    await _check_details({"dsn": "postgresql://u@db.example.com:15432/x", "host": "localhost", "port": 5432}, RULES)
    named = OutboundRules(private_allowed=True, platform=frozenset({("nats.internal", 4222)}))
    with pytest.raises(InvalidRequest, match="this platform's own servers"):
        await _check_details({"url": "nats://NATS.internal."}, named)
    await _check_details({"url": "nats://nats.internal:4223"}, named)


@pytest.mark.parametrize("details, path", [
    ({"host": "a]b"}, "details.host"), ({"url": "https://[internal/page"}, "details.url"),
    ({"opts": {"endpoint": "http://\u2100.example/"}}, "details.opts.endpoint"),
    ({"hosts": ["db", "[x"]}, "details.hosts[1]"),
])
async def test_a_host_like_key_that_is_no_host_is_refused_naming_the_key_path(details, path):
    with pytest.raises(InvalidRequest, match=rf"^{re.escape(path)}: not a valid host or URL") as refused:
        await _check_details(details, RULES)
    assert refused.value.status == 400


async def test_one_bad_host_in_a_list_does_not_hide_the_others():
    with pytest.raises(InvalidRequest, match="this platform's own servers"):
        await _check_details({"dsn": "postgresql://[x,127.0.0.1:15432/db"}, RULES)
    with pytest.raises(InvalidRequest, match="this platform's own servers"):
        await _check_details({"dsn": "host=a]b,127.0.0.1 port=15432"}, RULES)


async def test_without_a_port_or_a_known_type_only_the_written_port_counts():
    await _check_details({"host": "127.0.0.1"}, DEFAULTS, "BIGQUERY")  # no default port to check
    await _check_details({"url": "postgresql://u@10.0.0.5/x", "host": "localhost", "port": 6543}, DEFAULTS, "POSTGRES")


@pytest.mark.parametrize("details, message", [
    ({"dsn": "postgresql://u@169.254.169.254/x"}, "link-local"),
    ({"deep": [{"url": "redis://metadata.google.internal"}]}, "metadata"),
    ({"dsn": "host=fe80::1 port=5432"}, "link-local"), ({"x": "[::ffff:169.254.169.254]:80"}, "link-local"),
])
async def test_metadata_and_link_local_are_refused_in_any_form(details, message):
    with pytest.raises(InvalidRequest, match=message) as refused:
        await _check_details(details, RULES)
    assert refused.value.code == "url_not_allowed"


async def test_details_naming_too_many_servers_are_refused():
    details = {"hosts": [f"h{i}.invalid:1" for i in range(MAX_SERVERS + 1)]}
    with pytest.raises(InvalidRequest, match=f"at most {MAX_SERVERS}"):
        await _check_details(details, RULES)


# the values a 64 KiB string in connection details was read quadratically from, as functions of a size n
LARGE_VALUES = {
    "letters": lambda n: "a" * n,  # the URL pattern tried every start, every length (37b35efb; the test below)
    "comma letters": lambda n: ",a" * (n // 2),
    "a URL of comma letters": lambda n: "x://" + ",a" * (n // 2),
    "at signs, then an address": lambda n: "@" * n + "a:1x",
    "host keys": lambda n: " host=" * (n // 6),
    "a PostgreSQL URL of at signs": lambda n: "postgresql://" + "@" * n,  # each `@` read the rest again (59814525)
    "a PostgreSQL URL of userinfos": lambda n: "postgresql://" + "u@h," * (n // 4),
}


def _characters_read(monkeypatch: pytest.MonkeyPatch, text: str) -> int:
    """endpoints_in(text), counting the characters handed to each of urlcheck's readers (its own functions, its
    compiled patterns, the `re` and urllib.parse functions it calls): each of those is linear in what it is
    handed, so the sum is the work done, counted instead of timed."""
    import shared.urlcheck as urlcheck

    read = [0]

    def counted(function):
        @functools.wraps(function)
        def counting(*args, **kwargs):
            read[0] += sum(len(value) for value in (*args, *kwargs.values()) if isinstance(value, str))
            return function(*args, **kwargs)
        return counting

    class Counted:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            value = getattr(self.inner, name)
            return counted(value) if callable(value) and not isinstance(value, type) else value

    with monkeypatch.context() as patch:
        for name in ("_url_endpoints", "_authority_endpoints", "_key_value_endpoints", "_piece", "address_port",
                     "_literal", "read_port", "_ports", "urlsplit", "parse_qsl", "unquote"):
            patch.setattr(urlcheck, name, counted(getattr(urlcheck, name)))
        for name in ("_URL", "_KEY_VALUE", "_BARE", "re"):
            patch.setattr(urlcheck, name, Counted(getattr(urlcheck, name)))
        urlcheck.endpoints_in(text)
    return read[0]


@pytest.mark.parametrize("value", LARGE_VALUES)
def test_reading_a_large_value_takes_linear_time(monkeypatch, value):
    """A 64 KiB value was read quadratically (the registry's event loop held 6-30 s): the readers are handed a
    bounded number of characters per character of the value, the same at 4 times the size (reading the rest of the
    URL again after every `@` of 4,000 hands them ~16 times as much as at 1,000). Counted, not timed."""
    small, large = (_characters_read(monkeypatch, LARGE_VALUES[value](n)) for n in (1000, 4000))
    assert large <= 25 * len(LARGE_VALUES[value](4000)), (small, large)  # 10-12 now
    assert large <= 5 * small, (small, large)


def test_the_url_pattern_starts_only_where_a_run_of_scheme_characters_starts():
    """What keeps the URL pattern linear inside the regular expression engine, which cannot be counted from here:
    tried from every position of a run of letters, it read the rest of the run each time (60,000 letters: 11.6 s,
    37b35efb); a start inside a run now fails on its first character."""
    from shared.urlcheck import _URL

    text = "a" * 200 + "://h"
    assert _URL.search(text).start() == 0
    assert _URL.search(text, 1) is None
    assert [match.start() for match in _URL.finditer("x-y.z+a://h,b.c://i d://j")] == [0, 12, 20]


@pytest.mark.parametrize("text, expected", [
    ("db.example.com", ("db.example.com", None)), ("u:p@DB:5432", ("db", 5432)), ("[::1]:4222", ("::1", 4222)),
    ("::1", ("::1", None)), ("%6c%6fcalhost:1", ("localhost", 1)), ("h:0", ("h", None)), ("h:99999", ("h", None)),
    ("h:x", ("h", None)), ("", None), ("u@", None),
])
def test_address_port(text, expected):
    assert address_port(text) == expected


@pytest.mark.parametrize("value", [0, 65536, -1, 10**30, 1.5e300, 80.0, True, "abc", "80x", "", None, "²"])
def test_valid_port_refuses_what_is_not_a_port(value):
    with pytest.raises(ValueError, match="from 1 to 65535"):
        valid_port(value)


def test_valid_port_takes_ints_and_digit_strings():
    assert valid_port(1) == 1 and valid_port(65535) == 65535 and valid_port(" 5432 ") == 5432


def test_the_platforms_endpoints_read_query_hosts_and_host_lists():
    """The platform's own DSN is read as a client reads it: libpq's `?host=` and a host list (the weaker parser
    these replaced took the authority only), and a NATS URL list with the default port."""
    settings = Settings(postgres={"dsn": "postgresql://u:p@/railyard?host=db1.internal&port=6432"},
                        nats={"url": "nats://bus1.internal,nats://bus2.internal:4223"})
    found = platform_endpoints(settings)
    assert {("db1.internal", 6432), ("bus1.internal", 4222), ("bus2.internal", 4223)} <= found
    settings = Settings(postgres={"dsn": "postgresql://u@pg1.internal:5433,pg2.internal/x"})
    assert {("pg1.internal", 5433), ("pg2.internal", 5432)} <= platform_endpoints(settings)


@pytest.fixture
def fresh_search_domains():
    """search_domains read anew in the test and again after it (the test points RESOLV_CONF at its own file)."""
    import shared.urlcheck as urlcheck

    urlcheck.search_domains.cache_clear()
    yield
    urlcheck.search_domains.cache_clear()


async def test_a_platform_name_with_a_search_domain_is_refused(tmp_path, monkeypatch, fresh_search_domains):
    """Platform names were matched by exact name only: in Kubernetes `postgres.railyard:5432` and
    `postgres.railyard.svc.cluster.local:5432` (resolv.conf's search domains) named the platform's `postgres:5432`
    and were stored. Every form is matched now, read from resolv.conf (no DNS)."""
    import shared.urlcheck as urlcheck

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.96.0.10\nsearch railyard.svc.cluster.local svc.cluster.local cluster.local\n"
                      "options ndots:5\n")
    monkeypatch.setattr(urlcheck, "RESOLV_CONF", str(resolv))
    rules = OutboundRules(private_allowed=True, platform=frozenset({("postgres", 5432), ("nats.railyard", 4222)}))
    for details in ({"host": "postgres.railyard.svc.cluster.local", "port": 5432}, {"host": "postgres.railyard:5432"},
                    {"dsn": "postgresql://u@postgres.svc.cluster.local/x"},
                    {"host": "POSTGRES.railyard.", "port": 5432},
                    {"url": "nats://nats:4222"}, {"url": "nats://nats.railyard.svc.cluster.local:4222"}):
        with pytest.raises(InvalidRequest, match="this platform's own servers"):
            await _check_details(details, rules)
    for details in ({"host": "postgres.railyard", "port": 5433}, {"host": "postgres.example.com", "port": 5432},
                    {"url": "nats://nats.other:4222"}):
        await _check_details(details, rules)  # another port, another name: the tenant's own
    resolv.unlink()  # unreadable: exact names only
    urlcheck.search_domains.cache_clear()
    await _check_details({"host": "postgres.railyard", "port": 5432}, rules)
