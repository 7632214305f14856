"""The embedded SeaweedFS stores into every platform bucket on a disk with little free (shared/embedded/servers.py,
WEED_VOLUME_SLOTS): the real `weed server` of the stack's spec, its store on a 1 GiB tmpfs mounted in a mount
namespace of its own (a tmpfs holds only what is written: the test uses a few MB of memory, no disk)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import stat
import subprocess

import pytest

from shared import s3_light
from shared.embedded.servers import Secrets, _generated_secrets, s3_ready, seaweedfs_server, wait_until
from shared.objectstore import ALL_BUCKETS, MinioObjectStore
from shared.settings import S3Settings, StackSettings
from tests.stack import free_ports, release_ports

MOUNT_THEN_RUN = 'mount -t tmpfs -o size="$0" tmpfs "$1" && shift && exec "$@"'


def _own_mount_namespace(folder) -> list[str]:
    """A prefix that runs a command in a mount namespace of its own (and, not as root, a user namespace in which it
    may mount); the test skips, saying why, where the host allows neither."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) (util-linux) to mount a small disk")
    prefix = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    probe = subprocess.run([*prefix, "sh", "-c", MOUNT_THEN_RUN, "1m", str(folder), "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a namespace of its own here: {probe.stderr.strip()[:200]}")
    return prefix


def test_every_bucket_takes_a_write_on_a_disk_with_1_gib_free(tmp_path):
    """With `-volume.max=0` the volume server had 4 slots on this disk (one per 256 MiB free), the first bucket's
    write took them, and every other bucket's first write was refused with a 500 ("No writable volumes and no free
    volumes left"): on the CI host (< 12 GiB free) the later buckets of the 6 (42 slots) could take nothing."""
    (tmp_path / "run").mkdir(mode=0o700)
    prefix = _own_mount_namespace(tmp_path)
    ports = free_ports(4, {0, 1, 2, 3})
    secrets = Secrets(_generated_secrets())
    cfg = StackSettings(data_dir=tmp_path, host="127.0.0.1", s3_port=ports[0], weed_master_port=ports[1],
                        weed_volume_port=ports[2], weed_filer_port=ports[3])
    spec = seaweedfs_server(cfg, tmp_path, secrets)
    env = {key: value for key, value in os.environ.items() if not key.startswith(spec.env_drop)} | spec.env
    with open(tmp_path / "weed.log", "wb") as log:
        weed = subprocess.Popen([*prefix, "sh", "-c", MOUNT_THEN_RUN, "1g", str(tmp_path / "s3"), *spec.argv],
                                env=env, cwd=spec.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(lambda: s3_ready(cfg, secrets), "SeaweedFS", 90, alive=lambda: weed.poll() is None)
        settings = S3Settings(endpoint=f"127.0.0.1:{cfg.s3_port}", access_key=secrets.s3_access_key,
                              secret_key=secrets.s3_secret_key)
        store = MinioObjectStore(settings)

        async def write_each() -> dict[str, bool]:
            await store.ensure_buckets(ALL_BUCKETS)
            try:
                return {name: await s3_light.put_object(settings, store.bucket(name), "first", b"x" * 4096)
                        for name in ALL_BUCKETS}
            finally:
                s3_light.forget_kept()

        stored = asyncio.run(write_each())
        assert stored == dict.fromkeys(ALL_BUCKETS, True), (
            f"refused writes {stored}; weed's log:\n" + (tmp_path / "weed.log").read_text()[-3000:])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(weed.pid, signal.SIGKILL)
        weed.wait(10)
        release_ports(ports)
        for path in spec.leftovers:  # its gRPC sockets in /tmp, as the supervisor removes them
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
