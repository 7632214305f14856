"""SeaweedFS's own ports serve no one without the stack's keys: the objects behind the S3 gateway cannot be read,
written or deleted through the filer, the volume server, the master or any gRPC port by a local process that has
no access to the stack's data directory (shared/embedded/weed_security.py; docs/security.md)."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import ssl
import subprocess
import time
import uuid

import httpx
import jwt
import psutil
import pytest

from shared.embedded.servers import find_binary
from shared.embedded.weed_security import OTHER_CONFIGS
from shared.objectstore import BUCKET_TABLES, MinioObjectStore
from tests.stack import PLANTED_WEED_KEY

pytestmark = pytest.mark.integration

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # and an empty SETTINGS


@pytest.fixture(scope="module")
def stored(stack):
    """(bucket, key, bytes, file id on the volume server, the S3 client) of an object put through S3."""
    store = MinioObjectStore(stack.settings().s3)
    asyncio.run(store.ensure_buckets([BUCKET_TABLES]))
    s3, bucket = store._client, store.bucket(BUCKET_TABLES)
    key, data = f"ports/{uuid.uuid4().hex}.bin", b"tenant-secret-" + uuid.uuid4().bytes * 64
    s3.put_object(bucket, key, io.BytesIO(data), len(data))
    # what only a holder of the stack's certificate can do: weed's own shell, given the stack's config directory
    shell = subprocess.run(
        [find_binary("weed"), f"-config_dir={stack.data_dir / 'weed'}", "shell",
         f"-master=127.0.0.1:{stack.weed_ports['master']}", f"-filer=127.0.0.1:{stack.weed_ports['filer']}"],
        input=f"fs.meta.cat /buckets/{bucket}/{key}\n", capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": str(stack.data_dir / "weed")})
    fids = re.findall(r'"fileId":\s*"([^"]+)"', shell.stdout)
    assert fids, shell.stdout + shell.stderr
    yield bucket, key, data, fids[0], s3
    s3.remove_object(bucket, key)


def s3_read(s3, bucket: str, key: str) -> bytes:
    response = s3.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def answers_http2(port: int, context: ssl.SSLContext | None) -> bool:
    """Whether a gRPC port answers an HTTP/2 preface with its SETTINGS frame, over TLS when context is given."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            conn = context.wrap_socket(raw) if context else raw
            conn.sendall(H2_PREFACE)
            frame = conn.recv(9)
            return len(frame) == 9 and frame[3] == 0x04
    except (ssl.SSLError, OSError):
        return False


def tls_context(client_cert=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if client_cert:
        context.load_cert_chain(*client_cert)
    return context


@pytest.mark.parametrize("server", ["master-grpc", "volume-grpc", "filer-grpc", "s3-grpc"])
def test_a_grpc_port_takes_only_clients_with_the_stacks_certificate(stack, server):
    port = (int(stack.env["RAILYARD_STACK__S3_PORT"]) + 10000 if server == "s3-grpc"
            else stack.weed_ports[server])
    weed = stack.data_dir / "weed"
    assert not answers_http2(port, None), "plaintext gRPC (an insecure client, `weed shell`) is answered"
    assert not answers_http2(port, tls_context()), "a TLS client without a certificate is answered"
    # the control: the port is up and speaks gRPC over TLS to the holder of the stack's certificate
    assert answers_http2(port, tls_context((weed / "seaweedfs.crt", weed / "seaweedfs.key")))


def test_the_volume_server_serves_and_changes_an_object_only_with_a_signed_token(stack, stored):
    bucket, key, data, fid, s3 = stored
    url = f"http://127.0.0.1:{stack.weed_ports['volume']}/{fid}"
    with httpx.Client(timeout=10) as http:
        assert http.get(url).status_code == 401
        assert http.put(url, content=b"overwritten").status_code == 401
        assert http.delete(url).status_code == 401
        for other_key in ("not-the-stacks-key-but-32-bytes-long", PLANTED_WEED_KEY):  # the second: WEED_* in env
            forged = jwt.encode({"fid": fid, "exp": int(time.time()) + 30}, other_key, algorithm="HS256")
            assert http.get(url, headers={"Authorization": f"Bearer {forged}"}).status_code == 401, other_key
        # the control: the same request signed with the stack's read key gets the bytes
        signed = jwt.encode({"fid": fid, "exp": int(time.time()) + 30}, stack.secrets()["weed_jwt_signing_read_key"],
                            algorithm="HS256")
        allowed = http.get(url, headers={"Authorization": f"Bearer {signed}"})
        assert allowed.status_code == 200 and allowed.content == data
    assert s3_read(s3, bucket, key) == data


def test_the_filer_and_the_master_have_no_http_api(stack, stored):
    bucket, key, data, fid, s3 = stored
    filer = f"http://127.0.0.1:{stack.weed_ports['filer']}/buckets/{bucket}"
    master = f"http://127.0.0.1:{stack.weed_ports['master']}"
    with httpx.Client(timeout=10) as http:
        for response in (http.get(f"{filer}/{key}"), http.get(f"{filer}/ports/"),
                         http.put(f"{filer}/{key}", content=b"overwritten"),
                         http.put(f"{filer}/ports/new.bin", content=b"planted"), http.delete(f"{filer}/{key}")):
            assert response.status_code in (401, 403, 404), (response.request.method, response.status_code)
            assert data not in response.content
        # the master's HTTP API minted a volume token for any file id and deleted collections for anyone
        lookup = http.get(f"{master}/dir/lookup", params={"fileId": fid, "read": "yes"})
        assert lookup.status_code == 404 and "authorization" not in lookup.headers
        assert http.get(f"{master}/dir/assign").status_code == 404
        assert http.post(f"{master}/col/delete", params={"collection": f"none{uuid.uuid4().hex}"}).status_code == 404
    assert s3_read(s3, bucket, key) == data
    assert [o.object_name for o in s3.list_objects(bucket, prefix="ports/new")] == []


def test_seaweedfs_reads_only_the_stacks_configuration(stack):
    """Every *.toml it looks for is found in <data>/weed first (also in ./ and ~/.seaweedfs, which are that folder
    too), so none is read from the supervisor's working directory, the user's home or /etc/seaweedfs; no WEED_*
    variable (they override any setting, keys included) reaches it; its Unix sockets are in a folder only the
    stack's user can enter."""
    weed = psutil.Process(stack.state()["components"]["s3"]["pid"])
    config_dir = stack.data_dir / "weed"
    assert weed.cwd() == str(config_dir)
    environ = weed.environ()
    assert environ["HOME"] == str(config_dir)
    assert [name for name in environ if name.upper().startswith("WEED_")] == []
    for name in ("security", *OTHER_CONFIGS):
        assert (config_dir / f"{name}.toml").stat().st_mode & 0o777 == 0o600, name
    assert (stack.data_dir / "run").stat().st_mode & 0o777 == 0o700
    assert {path.name for path in (stack.data_dir / "run").glob("*.sock")} == {"s3.sock", "filer.sock"}


def test_the_volume_servers_status_says_no_more_than_docs_security_md_lists(stack, stored):
    """Known and documented: SeaweedFS serves the volume server's /status to anyone (no flag or JWT setting closes it,
    weed/server/volume_server.go): its version, disk usage and the volumes' ids, collections and counts. No file id,
    object key or object byte; a field added by a new SeaweedFS fails here until docs/security.md says it."""
    bucket, key, data, fid, s3 = stored
    response = httpx.get(f"http://127.0.0.1:{stack.weed_ports['volume']}/status", timeout=10)
    assert response.status_code == 200
    status = response.json()
    assert set(status) == {"Version", "DiskStatuses", "Volumes"}
    assert key.encode() not in response.content and fid.split(",")[-1].encode() not in response.content
    assert data[:14] not in response.content
