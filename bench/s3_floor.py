"""What storing a log segment costs at least, to set SeaweedFS's figure (bench/weed_put.py) against:

- `floor`: a blocking HTTP server that reads a PUT's body into one reused buffer and writes it to a new file,
  with or without an md5 of it (an S3 ETag), answering 200: its CPU per MB for PUTs of `--mb` random bytes sent
  by `shared.s3_light.put_object` (no S3 semantics: no signature check, no index; the floor of any S3 server);
- `page-cache`: this process's CPU per MB appending `--mb` writes to a new file, alternating a file that grows
  the page cache into memory not used before with one whose written range is flushed and dropped after each
  write (fdatasync + POSIX_FADV_DONTNEED), so that the next write reuses those pages. On a VM that backs guest
  memory on first touch and takes free memory back (Firecracker with free page reporting) the first costs
  several times the second.

    python -m bench.s3_floor [--mb 4.1] [--puts 30] [--rounds 2] [--dir build]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import socket
import tempfile
import time
from pathlib import Path

from bench.log_put import _cpu, _own
from shared import s3_light
from shared.settings import S3Settings


def _serve(port: int, root: str, md5: bool, ready) -> None:
    server = socket.create_server(("127.0.0.1", port))
    ready.set()
    buffer = memoryview(bytearray(64 << 20))
    count = 0
    while True:
        conn, _ = server.accept()
        count += 1
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(65536)
        head, _, rest = head.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        buffer[:len(rest)] = rest
        got = len(rest)
        while got < length:
            got += conn.recv_into(buffer[got:length])
        etag = hashlib.md5(buffer[:length]).hexdigest() if md5 else "-"  # noqa: S324 - an ETag, as S3's
        fd = os.open(f"{root}/{count}", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, buffer[:length])
        os.close(fd)
        conn.sendall(f'HTTP/1.1 200 OK\r\nETag: "{etag}"\r\nContent-Length: 0\r\n\r\n'.encode())
        conn.close()


def floor(data: bytes, puts: int, rounds: int, root: str) -> None:
    settings = S3Settings(endpoint="127.0.0.1:22998", access_key="bench", secret_key="bench")
    for r in range(rounds):
        for md5 in (False, True) if r % 2 == 0 else (True, False):
            ready = multiprocessing.Event()
            server = multiprocessing.Process(target=_serve, args=(22998, root, md5, ready), daemon=True)
            server.start()
            ready.wait(10)

            async def put_all() -> None:
                for i in range(puts):
                    assert await s3_light.put_object(settings, "bench", f"k{i}", data)

            before = _cpu(server.pid)
            asyncio.run(put_all())
            used = _cpu(server.pid) - before
            server.terminate()
            server.join()
            print(f"round {r} floor server, md5 {'on ' if md5 else 'off'}: "
                  f"{used / (len(data) * puts / 1e6) * 1e3:5.2f} ms CPU per MB", flush=True)


def page_cache(data: bytes, writes: int, rounds: int, root: str) -> None:
    mb = len(data) * writes / 1e6
    for r in range(rounds):
        for mode in ("grow", "recycle") if r % 2 == 0 else ("recycle", "grow"):
            path = Path(root) / f"pc-{mode}-{time.time_ns()}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            before = _own()
            for i in range(writes):
                os.pwrite(fd, data, i * len(data))
                if mode == "recycle":
                    os.fdatasync(fd)
                    os.posix_fadvise(fd, i * len(data), len(data), os.POSIX_FADV_DONTNEED)
            used = _own() - before
            os.close(fd)
            path.unlink()
            print(f"round {r} page cache, {mode:7s}: {used / mb * 1e3:5.2f} ms CPU per MB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=4.1)
    parser.add_argument("--puts", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default="build", help="where the files go (the stack's disk, not a tmpfs)")
    args = parser.parse_args()
    data = os.urandom(int(args.mb * 1024 * 1024))
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="s3floor-", dir=args.dir) as root:
        floor(data, args.puts, args.rounds, root)
        for name in os.listdir(root):
            os.unlink(os.path.join(root, name))
        page_cache(data, 100, args.rounds, root)


if __name__ == "__main__":
    main()
