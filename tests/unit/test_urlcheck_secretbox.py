from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from services.registry.mlflow import MlflowRegistry
from shared.errors import InvalidRequest, RailyardError, Unavailable
from shared.secretbox import SecretBox
from shared.settings import Settings
from shared.urlcheck import OutboundRules, own_addresses


def rules(development: bool = True, **registry) -> OutboundRules:
    """The rules of a deployment with the default endpoints (NATS 14222, PostgreSQL 15432, S3 18333, gateway 18000,
    SeaweedFS 19333/18081/18888 and their gRPC ports, all on 127.0.0.1)."""
    return OutboundRules.from_settings(Settings(env="development" if development else "production",
                                                registry=registry))


@pytest.mark.parametrize("url, development, message", [
    ("ftp://example.com/x", True, "http or https"),
    ("http:///nohost", True, "no host"),
    ("http://169.254.169.254/latest", True, "link-local"),
    ("http://[fe80::1]/", True, "link-local"),
    ("http://[fd00:ec2::254]/latest", True, "metadata"),  # AWS's IPv6 metadata: a private (ULA) address
    ("http://[::ffff:169.254.169.254]/", True, "link-local"),  # IPv4 wrapped in IPv6
    ("http://[64:ff9b::a9fe:a9fe]/", True, "link-local"),  # ... and through NAT64
    ("http://metadata.google.internal/", True, "metadata"),
    ("http://127.0.0.1:5000/", False, "not allowed on this platform"),
    ("http://10.1.2.3/", False, "PRIVATE_URLS"),
    ("http://100.64.1.1/", False, "PRIVATE_URLS"),  # shared address space (100.64/10): neither private nor global
    ("http://[fc00::1]/", False, "PRIVATE_URLS"),
    ("http://0.0.0.0/", True, "cannot be used"),
    ("http://[2002:7f00:1::]:1/", False, "PRIVATE_URLS"),  # 6to4 wrapping 127.0.0.1
    ("http://[2002:a9fe:a9fe::]/", True, "link-local"),  # 6to4 wrapping 169.254.169.254
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", False, "PRIVATE_URLS"),  # Teredo, client 127.0.0.1
    ("http://[fec0::1]/", False, "PRIVATE_URLS"),  # deprecated site-local: is_global to Python
    ("http://[::1/", True, "not a valid URL"), ("http://\u2100.example/", True, "not a valid URL"),  # were a 500
])
async def test_unsafe_urls(url, development, message):
    with pytest.raises(InvalidRequest, match=message) as refused:
        await rules(development).check(url)
    assert refused.value.code == "url_not_allowed" and refused.value.status == 400


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:14222/", "http://127.0.0.1:18222/varz", "http://127.0.0.1:15432/",  # NATS, its monitor, PG
    "http://127.0.0.1:18333/railyard-artifacts", "http://127.0.0.1:18888/buckets/", "http://127.0.0.1:28888/",
    "http://127.0.0.1:18081/", "http://127.0.0.1:19333/", "http://127.0.0.1:18000/v1/api",  # volume, master, gateway
    "http://localhost:18888/", "http://127.0.0.2:14222/", "http://[::1]:15432/", "http://[::ffff:127.0.0.1]:18333/",
    "http://[2002:7f00:1::]:14222/",  # 6to4 wrapping 127.0.0.1
])
async def test_the_platforms_own_servers_are_refused_even_in_development(url):
    with pytest.raises(InvalidRequest, match="this platform's own servers") as refused:
        await rules().check(url)
    assert refused.value.code == "url_not_allowed"


async def test_loopback_is_fine_in_development_and_private_urls_can_be_refused():
    assert (await rules().check("http://127.0.0.1:5000/api")).url == "http://127.0.0.1:5000/api"
    with pytest.raises(InvalidRequest, match="PRIVATE_URLS"):
        await rules(private_urls=False).check("http://127.0.0.1:5000/api")
    assert (await rules(False, private_urls=True).check("http://10.1.2.3:5000/")).url


async def test_every_address_of_this_machines_interfaces_is_its_own():
    """A server bound to 0.0.0.0/:: answers on eth0's addresses too; the host name alone resolved to 127.0.0.1 here,
    so `http://<eth0 address>:<NATS monitor port>/varz` was allowed in development."""
    import psutil

    addresses = {ipaddress.ip_address(a.address.split("%")[0]) for nic in psutil.net_if_addrs().values() for a in nic
                 if a.family in (socket.AF_INET, socket.AF_INET6)}
    interfaces = [a for a in addresses if not a.is_loopback and not a.is_link_local]
    if not interfaces:
        pytest.skip("this machine has no non-loopback address")
    assert addresses <= own_addresses()
    bound = OutboundRules(private_allowed=True, platform=frozenset({("0.0.0.0", 18222), ("::", 18222)}))
    for address in interfaces:
        literal = f"[{address}]" if address.version == 6 else str(address)
        with pytest.raises(InvalidRequest, match="this platform's own servers"):
            await bound.check(f"http://{literal}:18222/varz")
        assert (await bound.check(f"http://{literal}:5000/")).addresses == (address,)


@pytest.mark.parametrize("full_path", [
    "http://registry.invalid/api/2.0/mlflow-artifacts/artifacts/../../../../varz",
    "http://registry.invalid/api/2.0/mlflow-artifacts/artifacts/%2e%2e/%2E%2E/%2e%2e/%2e%2e/varz",
    "http://registry.invalid/api/2.0/mlflow-artifacts/artifacts/a/..%2f..%2f..%2fvarz",
    "http://registry.invalid/api/2.0/mlflow-artifacts/artifacts/a/%252e%252e/x",
    "http://registry.invalid/api/2.0/mlflow-artifacts/artifacts/./x",
    "http://registry.invalid/api/2.0/mlflow-artifacts/artifacts/..\\..\\varz",
    "http://registry.invalid:18222/api/2.0/mlflow-artifacts/artifacts/x",
])
async def test_an_artifact_path_leaving_the_artifact_proxy_is_refused(full_path):
    """httpx removes dot segments: `.../artifacts/../../../../varz` was sent as `/varz` after the raw prefix check."""
    registry = MlflowRegistry("http://registry.invalid", None, rules=rules())
    with pytest.raises(InvalidRequest, match="full_path from list_registry_model_version_artifacts") as refused:
        async for _ in registry.download(full_path):
            pass
    assert refused.value.status == 400
    assert registry._under_artifacts("http://registry.invalid/api/2.0/mlflow-artifacts/artifacts/1/m..d/x%20y.pkl")


async def test_a_platform_hosts_last_good_answer_is_kept_and_one_never_resolved_fails_closed(monkeypatch):
    """A platform endpoint's name: while it has never resolved nothing can be matched against it, so every check is
    503 `unavailable` (it was judged as this machine, and a failure was once cached as 'no address': fail open); once
    resolved, a failed or timed-out refresh keeps the last good answer."""
    import shared.urlcheck as urlcheck

    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    answers = iter([None, "10.0.0.5"])

    async def resolve(host, *args, **kwargs):
        if host == "nats.invalid":
            if next(answers, None) is None:
                raise socket.gaierror(socket.EAI_AGAIN, "temporary failure")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 4222))]
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    monkeypatch.setattr(urlcheck, "ENDPOINT_CACHE_SECONDS", 0.0)  # every check looks the name up again
    platform = OutboundRules(private_allowed=True, platform=frozenset({("nats.invalid", 4222)}))
    with pytest.raises(Unavailable, match="nats.invalid.*retry") as unavailable:  # never resolved: fail closed
        await platform.check("http://127.0.0.1:4222/")
    assert unavailable.value.status == 503 and unavailable.value.code == "unavailable"
    with pytest.raises(InvalidRequest, match="this platform's own servers"):  # resolves now
        await platform.check("http://10.0.0.5:4222/")
    with pytest.raises(InvalidRequest, match="this platform's own servers"):  # fails again: the last answer holds
        await platform.check("http://10.0.0.5:4222/")
    assert (await platform.check("http://127.0.0.1:4222/")).url  # resolved elsewhere: loopback is the tenant's


async def test_a_registry_host_not_resolved_in_time_is_503_and_platform_names_do_not_wait_for_tenants(monkeypatch):
    """A tenant's name lookup that times out was judged as 'does not resolve' (400, misleading) while its slot stayed
    held, and the platform's own names queued behind tenants' lookups: now it is 503 `unavailable` ('could not check
    host X now; retry'), at most LOOKUP_SLOTS tenants' lookups run at once, and the platform's names are looked up
    outside those slots."""
    import shared.urlcheck as urlcheck

    monkeypatch.setattr(urlcheck, "LOOKUP_TIMEOUT_SECONDS", 0.3)
    loop = asyncio.get_running_loop()
    running, most, hang = 0, 0, asyncio.Event()

    async def resolve(host, *args, **kwargs):
        nonlocal running, most
        if host == "nats.invalid":  # a platform name: not counted in the tenants' slots
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.9", 4222))]
        running += 1
        most = max(most, running)
        try:
            if host.startswith("slow"):
                await hang.wait()
            await asyncio.sleep(0.02)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 80))]
        finally:
            running -= 1

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    # the deadlines the checks set themselves, each against the loop's time when it was set
    deadlines: list[float] = []
    timeout_at = asyncio.timeout_at

    def recorded(when):
        deadlines.append(when - loop.time())
        return timeout_at(when)

    monkeypatch.setattr(asyncio, "timeout_at", recorded)
    platform = OutboundRules(private_allowed=True, platform=frozenset({("nats.invalid", 4222)}))
    # a guard against a check that waits for the hung resolver (never answered until `hang` is set), far past the
    # 0.3 s timeout: not a speed bound (the old `< 1.5 s` of wall time failed on a loaded machine)
    slow = await asyncio.wait_for(asyncio.gather(
        *(platform.check(f"http://slow{i}.invalid/") for i in range(urlcheck.LOOKUP_SLOTS)), return_exceptions=True),
        60)
    assert all(isinstance(e, Unavailable) and e.code == "unavailable" and e.status == 503 for e in slow), slow
    assert "could not check host 'slow0.invalid' now; retry" in slow[0].msg
    # given up at LOOKUP_TIMEOUT_SECONDS (0.3, not the 2 s default), every slot's lookup at once
    assert deadlines and all(left <= 0.3 for left in deadlines), deadlines
    assert most == urlcheck.LOOKUP_SLOTS
    # every tenant slot is held by a hung lookup: the platform's own name is still looked up and matched
    with pytest.raises(InvalidRequest, match="this platform's own servers"):
        await platform.check("http://10.0.0.9:4222/")
    with pytest.raises(Unavailable, match="could not check host 'other.invalid' now"):  # not "does not resolve"
        await platform.check("http://other.invalid/")
    hang.set()
    await asyncio.sleep(0.05)
    found = await asyncio.gather(*(platform.check(f"http://h{i}.invalid/") for i in range(12)))
    assert all(f.addresses == (ipaddress.ip_address("10.0.0.5"),) for f in found)
    assert most <= urlcheck.LOOKUP_SLOTS


def test_a_unix_socket_dsn_names_no_platform_endpoint():
    """`host=/var/run/postgresql port=5432` was read as the endpoint ('host=', 5432)."""
    from shared.urlcheck import platform_endpoints

    found = platform_endpoints(Settings(postgres={"dsn": "host=/var/run/postgresql port=5432 dbname=railyard"}))
    assert not any(host.startswith(("host", "/")) for host, _ in found), found
    found = platform_endpoints(Settings(postgres={"dsn": "postgresql:///railyard?host=/var/run/postgresql"}))
    assert not any(host.startswith(("host", "/")) or not host for host, _ in found), found


async def json_server(body: bytes, seen: list[bytes] | None = None) -> tuple[asyncio.Server, int]:
    """A local HTTP server on 127.0.0.1 answering every request 200 with the JSON `body` (each request's head is
    appended to `seen`): the server (close it with `async with server`) and its port."""
    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_the_request_goes_to_the_address_that_was_checked(monkeypatch):
    """DNS rebinding: the name resolves to an allowed address when checked, elsewhere afterwards (here 127.0.0.3,
    where nothing listens); the request must go to the checked address, not resolve the name again, while still
    naming the host."""
    seen: list[bytes] = []
    server, port = await json_server(b"{}", seen)
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    answers = iter(["127.0.0.1"])

    async def resolve(host, *args, **kwargs):
        if host == "registry.invalid":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers, "127.0.0.3"), port))]
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    async with server:
        registry = MlflowRegistry(f"http://registry.invalid:{port}", "t", rules=rules())
        assert await registry._get("/api/2.0/mlflow/registered-models/search") == {}
    assert seen and f"host: registry.invalid:{port}".encode() in seen[0].lower()
    answers = iter(["127.0.0.1"])
    checked = await rules().check(f"https://registry.invalid:{port}/x")
    url, headers, extensions = checked.pinned()
    assert url == f"https://127.0.0.1:{port}/x" and extensions == {"sni_hostname": "registry.invalid"}


def test_secret_box_round_trip_and_wrong_key():
    box = SecretBox(SecretBox.new_key())
    sealed = box.seal({"password": "hunter22"})
    assert b"hunter22" not in sealed and box.open(sealed) == {"password": "hunter22"}
    with pytest.raises(RailyardError, match="cannot be decrypted"):
        SecretBox(SecretBox.new_key()).open(sealed)
    with pytest.raises(Unavailable, match="SECRETS_KEY"):
        SecretBox("").seal("x")


def _certificate(tmp_path, name: str):
    """A self-signed certificate for `name`: (its file, its key's file)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


async def test_a_pinned_https_request_still_verifies_the_hosts_certificate(tmp_path, monkeypatch):
    """The URL names the checked address; TLS still sends and verifies the host's name (a certificate for another
    name is refused), so pinning costs no verification."""
    import ssl

    import httpx

    cert, key = _certificate(tmp_path, "registry.invalid")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def resolve(host, *args, **kwargs):
        if host.endswith(".invalid"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    client_tls = ssl.create_default_context(cafile=str(cert))
    async with server, httpx.AsyncClient(verify=client_tls) as client:
        url, headers, extensions = (await rules().check(f"https://registry.invalid:{port}/")).pinned()
        assert url.startswith("https://127.0.0.1:")
        assert (await client.get(url, headers=headers, extensions=extensions)).text == "ok"
        url, headers, extensions = (await rules().check(f"https://other.invalid:{port}/")).pinned()
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED|match"):
            await client.get(url, headers=headers, extensions=extensions)


async def test_the_next_checked_address_is_tried_when_one_does_not_connect(monkeypatch):
    """A name with two addresses, the preferred one unreachable (here 127.0.0.3, where nothing listens): the request
    goes to the other checked address, as it did when httpx resolved the name itself."""
    server, port = await json_server(b'{"ok": true}')
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def resolve(host, *args, **kwargs):
        if host == "registry.invalid":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("127.0.0.3", "127.0.0.1")]
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    async with server:
        registry = MlflowRegistry(f"http://registry.invalid:{port}", None, rules=rules())
        assert await registry._get("/api/2.0/mlflow/registered-models/search") == {"ok": True}


async def test_a_platform_names_lookup_slower_than_the_timeout_is_kept_and_refreshes_do_not_wait(monkeypatch):
    """A platform name's lookup that outlived LOOKUP_TIMEOUT_SECONDS kept running but nothing saved its answer, so
    with a slow resolver the name never resolved (503 forever), and with a good answer cached every check waited
    while a refresh was pending: the answer is now stored when it arrives and a pending refresh uses the last one."""
    import shared.urlcheck as urlcheck

    monkeypatch.setattr(urlcheck, "LOOKUP_TIMEOUT_SECONDS", 0.3)
    loop = asyncio.get_running_loop()
    calls = 0

    refresh_answers = asyncio.Event()

    async def resolve(host, *args, **kwargs):
        nonlocal calls
        assert host == "nats.invalid"
        calls += 1
        await (asyncio.sleep(0.5) if calls == 1 else refresh_answers.wait())  # a refresh answers when let
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 4222))]

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    platform = OutboundRules(private_allowed=True, platform=frozenset({("nats.invalid", 4222)}))
    with pytest.raises(Unavailable, match="nats.invalid"):  # never resolved yet: waits 0.3 s, fails closed
        await platform.check("http://10.0.0.5:4222/")
    await asyncio.sleep(0.3)  # the lookup finishes meanwhile, with no one waiting for it
    with pytest.raises(InvalidRequest, match="this platform's own servers"):
        await platform.check("http://10.0.0.5:4222/")
    assert calls == 1  # the late answer was kept: no lookup again
    monkeypatch.setattr(urlcheck, "ENDPOINT_CACHE_SECONDS", 0.0)  # stale: every check starts (or joins) a refresh
    monkeypatch.setattr(urlcheck, "LOOKUP_TIMEOUT_SECONDS", 3600.0)  # a check waiting for the refresh waits for good
    async with asyncio.timeout(10):  # (that wait's failure in 10 s, not pytest-timeout's 300: no speed bound)
        for _ in range(3):
            with pytest.raises(InvalidRequest, match="this platform's own servers"):
                await platform.check("http://10.0.0.5:4222/")
    await asyncio.sleep(0)  # the refresh's lookup starts
    # answered while the refresh is still unanswered: the last good answer, at once; one refresh for the three checks
    assert calls == 2 and not refresh_answers.is_set()
    refresh_answers.set()
    await asyncio.sleep(0.05)  # the refresh ends within the test


async def test_one_users_never_answering_lookups_do_not_make_another_users_check_503(monkeypatch):
    """A registry lookup's slot is held until the resolver answers: one user's LOOKUP_SLOTS registries/create calls
    naming never-answering hosts held every slot, and every other tenant's check was 503. A user now has one lookup
    at a time; its others wait their turn (503 in time) without taking a slot."""
    import shared.urlcheck as urlcheck

    monkeypatch.setattr(urlcheck, "LOOKUP_TIMEOUT_SECONDS", 0.3)
    loop = asyncio.get_running_loop()
    hang, running, most = asyncio.Event(), 0, 0

    async def resolve(host, *args, **kwargs):
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            if host.startswith("slow"):
                await hang.wait()
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 80))]
        finally:
            running -= 1

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    platform = OutboundRules(private_allowed=True)
    slow = await asyncio.gather(*(platform.check(f"http://slow{i}.invalid/", caller="user-a")
                                  for i in range(urlcheck.LOOKUP_SLOTS * 2)), return_exceptions=True)
    assert all(isinstance(e, Unavailable) and e.status == 503 for e in slow), slow
    assert most == 1  # user A's lookups took one slot between them
    more = asyncio.gather(*(platform.check(f"http://slow-more{i}.invalid/", caller="user-a") for i in range(4)),
                          return_exceptions=True)
    found = await platform.check("http://registry-b.invalid/", caller="user-b")  # user A still holds its lookup
    assert found.addresses == (ipaddress.ip_address("10.0.0.5"),)
    assert all(isinstance(e, Unavailable) for e in await more)
    hang.set()
    await asyncio.sleep(0.05)
    assert (await platform.check("http://slow-again.invalid/", caller="user-a")).url  # A's turn is free again
    assert not urlcheck._caller_turns.get(loop)  # nothing kept per user once answered
