"""What a log segment's S3 PUT costs, per KB, on both sides: the embedded SeaweedFS (`weed server -filer -s3`, started
as the stack starts it: `servers.seaweedfs_server`, security.toml's JWT keys and mutual TLS) and the client
(`shared.s3_light.put_object`, as the engine writes its segments), in CPU time, not wall time: two or more weed
processes side by side, one variant each (`bench.weed_put.VARIANTS` plus the ones below), rounds of PUTs given to
each in turn, A B A B, so load from other work on the machine falls on every arm alike.

    python -m bench.s3_put_cost [--variants base,gogc100] [--mb 4.1] [--puts 20] [--rounds 6] [--inflight 2]

Per round and arm: weed's CPU (user + system, /proc/<pid>/stat) in us per KB written, its minor page faults per
MB, and this process's CPU (the client: signing, the event loop, the socket writes) in us per KB. The payload is
random bytes (a segment's raw float inputs hardly compress).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench import weed_put
from shared import s3_light
from shared.embedded import servers, weed_security

# name -> (extra environment, extra arguments, arguments removed by prefix), beside bench.weed_put's
weed_put.VARIANTS.update({
    "maxmb8": ({}, ["-filer.maxMB=8"], ()),
    # the collector paced by a memory limit instead of heap growth: fewer collections, so the chunk buffers'
    # sync.Pool is emptied less often and fewer fresh pages are touched (each costs a fault here)
    "memlimit128": ({"GOGC": "off", "GOMEMLIMIT": "128MiB"}, [], ()),
    "gogc100": ({"GOGC": "100"}, [], ()),
    "gogc400": ({"GOGC": "400"}, [], ()),
})


_stack_spec = servers.seaweedfs_server


def _spec(cfg, data_dir: Path, secrets):  # noqa: ANN001, ANN202 - servers.seaweedfs_server's signature
    """The stack's spec; for the arm named `insecure`, without security.toml (no JWT, no gRPC TLS: what those
    settings cost per byte), its other *.toml files still in its own -config_dir."""
    spec = _stack_spec(cfg, data_dir, secrets)
    if cfg.data_dir.name != "insecure":
        return spec
    bare = data_dir / "weed-bare"
    bare.mkdir(mode=0o700, exist_ok=True)
    weed_security.write_other_configs(bare, data_dir / "s3")
    argv = [f"-config_dir={bare}" if a.startswith("-config_dir=") else a for a in spec.argv]
    return dataclasses.replace(spec, argv=argv, cwd=bare, env={**spec.env, "HOME": str(bare)})


servers.seaweedfs_server = _spec
weed_put.VARIANTS["insecure"] = ({}, [], ())


def _faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


async def paced_round(weed: weed_put.Weed, data: bytes, puts: int, gap: float, tag: str) -> None:
    """One PUT after another with `gap` seconds between them, as a replica writes its segments under load (one
    every ~80 ms at ~420k logged rows a second): the Go heap is not kept busy as by back-to-back PUTs."""
    for i in range(puts):
        assert await s3_light.put_object(weed.s3, "bench", f"{tag}/{i:05d}", data)
        await asyncio.sleep(gap)


def _volume_put(weed: weed_put.Weed, data: bytes) -> None:
    """One needle written as the S3 gateway writes a chunk, minus its hashes: a file id and its JWT from the
    master's HTTP API (`/dir/assign`, on only in the `filerhttp` arm), then a multipart POST to the volume server
    without Content-MD5 (so the volume server checks none). No filer entry is made: what the bytes alone cost
    SeaweedFS on the shortest path it has."""
    import json
    import urllib.request

    master = f"http://{weed.cfg.host}:{weed.cfg.weed_master_port}"
    with urllib.request.urlopen(f"{master}/dir/assign", timeout=10) as answer:  # noqa: S310 - our own bench server
        assigned, token = json.loads(answer.read()), answer.headers.get("Authorization", "")
    boundary = "railyardbenchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"segment\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"http://{assigned['url']}/{assigned['fid']}", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Authorization": token})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        assert answer.status in (200, 201), answer.status


async def volume_round(weed: weed_put.Weed, data: bytes, puts: int) -> None:
    for _ in range(puts):
        await asyncio.to_thread(_volume_put, weed, data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="base,gogc100")
    parser.add_argument("--mb", type=float, default=4.1)
    parser.add_argument("--puts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--inflight", type=int, default=2)
    parser.add_argument("--via", default="s3", help="s3, or volume: the `filerhttp` arm's PUTs go straight to the "
                        "volume server (`_volume_put`), the other arms' through S3")
    parser.add_argument("--gap", type=float, default=0.0,
                        help="seconds between PUTs, one at a time (0: --inflight PUTs back to back)")
    args = parser.parse_args()
    names = args.variants.split(",")
    data = os.urandom(int(args.mb * 1024 * 1024))
    kb = len(data) * args.puts / 1000
    with tempfile.TemporaryDirectory(prefix="railyard-s3cost-") as root:
        weeds = [weed_put.Weed(name, i, Path(root)) for i, name in enumerate(names)]
        try:
            for weed in weeds:
                weed.ready()

            async def run() -> None:
                for weed in weeds:
                    assert await s3_light.make_bucket(weed.s3, "bench")
                    await weed_put.put_round(weed, data, 5, args.inflight, "warm")
                results: dict[str, list[tuple[float, float, float]]] = {weed.name: [] for weed in weeds}
                for r in range(args.rounds):
                    for weed in weeds if r % 2 == 0 else weeds[::-1]:
                        await asyncio.sleep(0.5)  # the previous arm's work settles
                        cpu, faults, client = weed.cpu(), _faults(weed.process.pid), time.process_time()
                        if args.via == "volume" and weed.name == "filerhttp":
                            await volume_round(weed, data, args.puts)
                        elif args.gap:
                            await paced_round(weed, data, args.puts, args.gap, f"r{r}")
                        else:
                            await weed_put.put_round(weed, data, args.puts, args.inflight, f"r{r}")
                        client = time.process_time() - client
                        await asyncio.sleep(0.3)
                        cpu, faults = weed.cpu() - cpu, _faults(weed.process.pid) - faults
                        results[weed.name].append((cpu / kb * 1e6, faults / (kb / 1000), client / kb * 1e6))
                        print(f"round {r} {weed.name:14s} weed {cpu / kb * 1e6:6.2f} us/KB, "
                              f"{faults / (kb / 1000):6.1f} faults/MB, client {client / kb * 1e6:5.2f} us/KB, "
                              f"weed RSS {_rss(weed.process.pid)} MiB, load {os.getloadavg()[0]:.2f}", flush=True)
                print("weed us/KB each round (median) | faults/MB (median) | client us/KB (median):")
                for name, rows in results.items():
                    cols = list(zip(*rows, strict=True))
                    print(f"  {name:14s} " + " ".join(f"{v:5.2f}" for v in cols[0])
                          + f" ({statistics.median(cols[0]):.2f}) | {statistics.median(cols[1]):6.1f}"
                          + f" | {statistics.median(cols[2]):.2f}")

            asyncio.run(run())
        finally:
            for weed in weeds:
                weed.stop()


if __name__ == "__main__":
    main()
