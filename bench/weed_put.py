"""What a log segment's PUT costs SeaweedFS under different settings: two or more `weed server -filer -s3`
processes side by side, each started as the embedded stack starts it (`servers.seaweedfs_server`, security.toml
and all) plus one variant's environment and flags, and rounds of PUTs (`shared.s3_light.put_object`, as the
engine writes its segments) given to each in turn, A B A B: CPU of each `weed` from /proc per MB and per PUT.

    python -m bench.weed_put [--variants base,gomaxprocs1] [--mb 4.1] [--puts 20] [--rounds 4] [--inflight 2]
    python -m bench.weed_put --variants filerhttp --via s3,filer     # the S3 gateway against the filer's HTTP API
    python -m bench.weed_put --variants base --durability 20         # acknowledged PUTs survive a SIGKILL
    python -m bench.weed_put --variants base --via s3,s3keep --mb 0.09 --inflight 1   # a PUT's connection's share

Nothing else runs in those processes, so the per-MB figure is SeaweedFS's own (the rest of the stack is not
started); `--idle 5` also reports each one's CPU per second while nothing is PUT. The objects are random bytes
(a log segment of random float32 tensors hardly compresses under snappy either).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from shared import s3_light
from shared.embedded import servers
from shared.settings import S3Settings, StackSettings

TICK = os.sysconf("SC_CLK_TCK")

# name -> (extra environment, extra arguments, arguments removed by prefix)
VARIANTS: dict[str, tuple[dict[str, str], list[str], tuple[str, ...]]] = {
    "base": ({}, [], ()),
    "gomaxprocs1": ({"GOMAXPROCS": "1"}, [], ()),
    "gomaxprocs1-gogc100": ({"GOMAXPROCS": "1", "GOGC": "100"}, [], ()),
    "gogc100": ({"GOGC": "100"}, [], ()),
    "gogc200": ({"GOGC": "200"}, [], ()),
    "maxmb16": ({}, ["-filer.maxMB=16"], ()),
    "maxmb1": ({}, ["-filer.maxMB=1"], ()),
    "gomaxprocs1-maxmb16": ({"GOMAXPROCS": "1"}, ["-filer.maxMB=16"], ()),
    # Go's scavenger hands freed heap back with MADV_FREE instead of MADV_DONTNEED: pages stay mapped until the
    # kernel needs them, so reusing them faults nothing (on this VM a fault on memory given back costs ~3 ms a MiB)
    "madvfree": ({"GODEBUG": "madvdontneed=0"}, [], ()),
    # small files kept in the filer store (leveldb2) instead of a volume: the filer's HTTP API only, S3 PUTs
    # always write volume chunks (SaveSmallInline: false in putToFiler); the volume's .dat grows either way
    "savetofiler8m": ({}, ["-filer.saveToFilerLimit=8388608"], ()),
    # the filer's (and the master's) HTTP API on, for `--via filer`: the PUT goes to the filer's HTTP API (a JWT
    # signed with jwt.filer_signing), not through the S3 gateway
    "filerhttp": ({}, [], ("-disableHttp",)),
    # Go's profiler on port 26060 (weed binds it on every address; `curl http://127.0.0.1:26060/debug/pprof/
    # profile?seconds=10 -o p.pb.gz` during a round, `python -m bench.pprof_top p.pb.gz`)
    "pprof": ({}, ["-debug", "-debug.port=26060"], ()),
}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Weed:
    def __init__(self, name: str, index: int, root: Path) -> None:
        self.name = name
        self.root, self.index = root, index
        env_extra, args_extra, args_removed = VARIANTS[name]
        base = 21000 + 100 * index
        self.cfg = StackSettings(data_dir=root / name, s3_port=base + 33, weed_master_port=base + 34,
                                 weed_volume_port=base + 35, weed_filer_port=base + 36)
        data = self.cfg.data_dir
        (data / "run").mkdir(parents=True, exist_ok=True)
        self.secrets, _ = servers.Secrets.load_or_create(data / "secrets.json")
        spec = servers.seaweedfs_server(self.cfg, data, self.secrets)
        argv = [a for a in spec.argv if not a.startswith(args_removed or ("\0",))] + args_extra
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WEED_", "GOMAXPROCS", "GOGC", "GODEBUG"))}
        self.log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv, env={**env, **spec.env, **env_extra}, cwd=spec.cwd,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.s3 = S3Settings(endpoint=f"{self.cfg.host}:{self.cfg.s3_port}", access_key=self.secrets.s3_access_key,
                             secret_key=self.secrets.s3_secret_key)
        self.leftovers = spec.leftovers

    def ready(self) -> None:
        servers.wait_until(lambda: servers.s3_ready(self.cfg, self.secrets), f"weed {self.name}", 90,
                           alive=lambda: self.process.poll() is None)

    def restart(self, kill: bool) -> None:
        """Stopped (SIGKILL when `kill`) and started again on the same data directory."""
        if kill:
            self.process.kill()
            self.process.wait()
            self.log.close()
            for path in self.leftovers:
                path.unlink(missing_ok=True)
        else:
            self.stop()
        self.__init__(self.name, self.index, self.root)
        self.ready()

    def cpu(self) -> float:
        return _cpu(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(3)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        for path in self.leftovers:
            path.unlink(missing_ok=True)


def filer_jwt(key: str, seconds: int = 10) -> str:
    """An HS256 token as SeaweedFS's GenJwtForFilerServer makes it (an expiry, no other claim)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"exp": int(time.time()) + seconds}).encode())
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


async def filer_put(weed: Weed, key: str, data: bytes) -> bool:
    """One PUT of `data` to the filer's HTTP API at /buckets/bench/<key> (what S3 shows as bench/<key>)."""
    reader, writer = await asyncio.open_connection(weed.cfg.host, weed.cfg.weed_filer_port)
    try:
        token = filer_jwt(weed.secrets.values["weed_jwt_filer_signing_key"])
        writer.write(f"PUT /buckets/bench/{key} HTTP/1.1\r\nHost: {weed.cfg.host}\r\nAuthorization: Bearer {token}\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n"
                     "Connection: close\r\n\r\n".encode())
        writer.write(data)
        await writer.drain()
        status = (await reader.readline()).split()
        await reader.read()
        return len(status) > 1 and status[1] in (b"200", b"201")
    finally:
        writer.close()


class KeptPut:
    """S3 PUTs signed as `shared.s3_light.put_object` signs them (UNSIGNED-PAYLOAD on loopback), each on one kept-alive
    connection of a pool instead of a connection a PUT (`--via s3keep`): what SeaweedFS's per-PUT cost is without
    the TCP connection's set-up and close."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def put(self, bucket: str, key: str, data: bytes) -> bool:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            host, _, port = self.settings.endpoint.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
        path = f"/{bucket}/{key}"
        headers = s3_light.signed_headers(self.settings, "PUT", path, payload_sha256=s3_light.UNSIGNED_PAYLOAD) | {
            "content-type": "application/octet-stream", "content-length": str(len(data))}
        writer.write((f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                      + "\r\n").encode())
        writer.write(data)
        await writer.drain()
        status = (await reader.readline()).split()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        return len(status) > 1 and status[1] == b"200"


async def put_round(weed: Weed, data: bytes, puts: int, inflight: int, tag: str, via: str = "s3") -> float:
    gate = asyncio.Semaphore(inflight)
    kept = weed.kept if via == "s3keep" else None

    async def one(i: int) -> None:
        async with gate:
            if kept is not None:
                assert await kept.put("bench", f"{tag}/{i:05d}", data)
            elif via == "filer":
                assert await filer_put(weed, f"{tag}/{i:05d}", data)
            else:
                assert await s3_light.put_object(weed.s3, "bench", f"{tag}/{i:05d}", data)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(puts)))
    return time.perf_counter() - started


async def durability(weed: Weed, count: int, size: int) -> None:
    """Acknowledged PUTs survive a SIGKILL of `weed server` and its restart (nothing fsyncs: the page cache keeps
    what the volume server, the filer's leveldb and its log wrote), read back byte for byte."""
    assert await s3_light.make_bucket(weed.s3, "bench")
    objects = {f"durable/{i:04d}": os.urandom(size if i % 2 else 100_000 + i) for i in range(count)}
    for key, body in objects.items():
        assert await s3_light.put_object(weed.s3, "bench", key, body)
    started = time.perf_counter()
    weed.restart(kill=True)
    print(f"killed right after the last acknowledgement, back in {time.perf_counter() - started:.1f} s")
    lost = []
    for key, body in objects.items():
        status, got = await s3_light.request(weed.s3, "GET", f"/bench/{key}", timeout=30)
        if status != 200 or got != body:
            lost.append((key, status, len(got)))
    print(f"{count - len(lost)} of {count} acknowledged objects read back intact" + (f"; lost: {lost}" if lost else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="base,gomaxprocs1")
    parser.add_argument("--mb", type=float, default=4.1)
    parser.add_argument("--puts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=2)
    parser.add_argument("--idle", type=float, default=0.0)
    parser.add_argument("--via", default="s3", help="s3, s3keep or filer: each variant's PUTs through the S3 "
                        "gateway (a connection a PUT, or kept-alive connections: s3keep) or the filer's HTTP API; "
                        "s3,filer: both in turn on the first variant (filer needs the filer's HTTP API on: filerhttp)")
    parser.add_argument("--durability", type=int, default=0,
                        help="N: PUT N objects to the first variant, SIGKILL it the moment the last is acknowledged, "
                             "start it again and read every object back (instead of the CPU rounds)")
    args = parser.parse_args()
    names = args.variants.split(",")
    data = os.urandom(int(args.mb * 1024 * 1024))
    mb = len(data) * args.puts / 1e6
    with tempfile.TemporaryDirectory(prefix="railyard-weedput-") as root:
        weeds = [Weed(name, i, Path(root)) for i, name in enumerate(names)]
        try:
            for weed in weeds:
                weed.ready()

            if args.durability:
                asyncio.run(durability(weeds[0], args.durability, len(data)))
                return

            async def run() -> None:
                for weed in weeds:
                    weed.kept = KeptPut(weed.s3)
                    assert await s3_light.make_bucket(weed.s3, "bench")
                    await put_round(weed, data, 3, 1, "warm")
                ways = args.via.split(",")
                runs = [(weed, via) for weed in weeds for via in ways] if len(ways) == 1 else [
                    (weeds[0], via) for via in ways]
                results: dict[str, list[tuple[float, float]]] = {f"{w.name} {via}": [] for w, via in runs}
                for r in range(args.rounds):
                    order = runs if r % 2 == 0 else runs[::-1]
                    for weed, via in order:
                        await asyncio.sleep(0.5)  # the previous one's work settles
                        before = weed.cpu()
                        wall = await put_round(weed, data, args.puts, args.inflight, f"r{r}-{via}", via)
                        await asyncio.sleep(0.3)
                        used = weed.cpu() - before
                        results[f"{weed.name} {via}"].append((used, wall))
                        print(f"round {r} {weed.name + ' ' + via:22s} {used / mb * 1e3:6.2f} ms CPU per MB, "
                              f"{used / args.puts * 1e3:6.1f} ms a PUT, {wall / args.puts * 1e3:6.1f} ms wall a PUT, "
                              f"load {os.getloadavg()[0]:.2f}", flush=True)
                print("per MB (each round):")
                for name, rows in results.items():
                    print(f"  {name:22s} " + " ".join(f"{used / mb * 1e3:5.2f}" for used, _ in rows))
                for weed in weeds:
                    dat = sum(p.stat().st_size for p in (weed.cfg.data_dir / "s3").rglob("*.dat"))
                    ldb = sum(p.stat().st_size for p in (weed.cfg.data_dir / "s3" / "filerldb2").rglob("*")
                              if p.is_file())
                    print(f"  {weed.name:22s} volumes' .dat files {dat / 1e6:8.1f} MB, filer store {ldb / 1e6:6.1f} MB")
                if args.idle:
                    for weed in weeds:
                        before = weed.cpu()
                        await asyncio.sleep(args.idle)
                        print(f"idle {weed.name:22s} {(weed.cpu() - before) / args.idle * 1e3:5.1f} ms CPU a second")

            asyncio.run(run())
        finally:
            for weed in weeds:
                weed.stop()


if __name__ == "__main__":
    main()
