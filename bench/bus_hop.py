"""The gateway -> NATS -> engine hop alone: a bare nats-server and two nats-py processes mimicking it.

    python -m bench.bus_hop [--count 5000] [--rounds 4] [--variant 'label=KEY=VALUE,...' ...]

Starts one nats-server per variant, configured as the embedded stack's (max_payload, JetStream with
`sync_interval: always`, every bus identity with its permissions from deploy/nats-permissions.json), an
"engine" process (the `engine` identity, a queue subscription answering each request with a reply of the real
one's size and headers) and a "gateway" process (the `gateway` identity, sequential requests of the real
request's size with its request-id header, through nats-py's muxed inbox as services/gateway/inference.py
sends them). Rounds alternate over the variants; per variant it prints the hop's p50/p99 and the CPU per
request of nats-server and of each client (from /proc). A variant is a label and comma-separated settings:
`gomaxprocs=N` (nats-server's GOMAXPROCS), `auth=0` (no authorization), `js=0` (no JetStream), `sync=2m` (JetStream's
sync_interval instead of `always`: to see what the fsyncs cost, not a setting to use), `logs=1` (the
inference-log path beside the hop: a batch published to INFERENCE_LOGS every 20 ms, consumed as the log store does;
`logs=100`: every 100 ms, the same bytes a second; `lazy=1`: once its window is open the consumer sleeps it out
and fetches what came at once, instead of fetching as each batch arrives),
`conf=<line>` (a line added to nats-server's configuration), `env=K:V` (nats-server's environment),
`client=K:V` (a nats.connect option of both clients, a Python literal; `client=direct:True`: the engine writes
its reply to the socket at once instead of through nats-py's flusher task; `client=inline:True` too: it answers in
nats-py's parser, through the single-reply `future` path, with no subscription task). `--work-us` makes each client spin
that long per request, as the real gateway and engine work between messages (nats-server then idles).
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared import bus_identities
from shared.embedded.servers import NATS_MAX_PAYLOAD, find_binary

TICK = os.sysconf("SC_CLK_TCK")
REQUEST_BODY = bytes(597)  # a batch-1 records request's Arrow IPC stream, as the stack's connz counts it
REPLY_BODY = bytes(400)
META = json.dumps({"last_model": {"name": "ccfraud", "version": "0f3c" * 8, "sha": "ab" * 32},
                   "pipeline_version": "1d2e" * 8, "elapsed": [123456]})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.endswith("ctxt_switches:") or "ctxt_switches" in line:
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def _busy(seconds: float) -> None:
    """Spin for `seconds` of CPU, as the real process's own work per request does (nats-server idles meanwhile)."""
    if seconds:
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass


async def _engine(url: str, user: str, password: str, options: dict) -> None:
    import nats

    role = "engine"

    direct = options.pop("direct", False)  # the reply written to the socket at once, not by nats-py's flusher
    inline = options.pop("inline", False)  # and the request answered in nats-py's parser, no subscription task
    nc = await nats.connect(url, user=user or None, password=password or None,
                            inbox_prefix=bus_identities.inbox_prefix(role),
                            **options)
    headers = {"Railyard-Meta": META}

    work = float(os.environ.get("BUS_HOP_WORK_US", "0")) / 1e6

    header = b"NATS/1.0\r\nRailyard-Meta: " + META.encode() + b"\r\n\r\n"

    async def answer(msg) -> None:
        _busy(work)
        if direct and not nc._pending:
            nc._transport.write(b"HPUB %s %d %d\r\n%s%s\r\n" % (msg.reply.encode(), len(header),
                                                                   len(header) + len(REPLY_BODY), header, REPLY_BODY))
            return
        await nc.publish(msg.reply, REPLY_BODY, headers=headers)

    if inline:  # answered as nats-py parses it (its single-reply `future` path), no subscription task
        class Inline:
            def cancelled(self) -> bool:
                return False

            def set_result(self, msg) -> None:
                _busy(work)
                if not nc._pending:
                    nc._transport.write(b"HPUB %s %d %d\r\n%s%s\r\n" % (
                        msg.reply.encode(), len(header), len(header) + len(REPLY_BODY), header, REPLY_BODY))
                else:
                    asyncio.ensure_future(nc.publish(msg.reply, REPLY_BODY, headers=headers))

        sub = await nc.subscribe("engine.hop.infer", queue="engine-hop", future=asyncio.Future())
        sub._future = Inline()
    else:
        await nc.subscribe("engine.hop.infer", queue="engine-hop", cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _gateway(url: str, user: str, password: str, options: dict) -> None:
    import nats

    role = "gateway"
    options.pop("direct", None)  # the engine's
    options.pop("inline", None)

    nc = await nats.connect(url, user=user or None, password=password or None,
                            inbox_prefix=bus_identities.inbox_prefix(role),
                            **options)

    work = float(os.environ.get("BUS_HOP_WORK_US", "0")) / 1e6

    async def run(count: int) -> list[float]:
        samples = []
        for _ in range(count):
            _busy(work)
            started = time.perf_counter()
            await nc.request("engine.hop.infer", REQUEST_BODY, timeout=5.0,
                             headers={"Railyard-Request-Id": secrets.token_hex(16)})
            samples.append(time.perf_counter() - started)
        return samples

    await run(500)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        samples = sorted(await run(int(line)))
        print(json.dumps([samples[len(samples) // 2], samples[int(len(samples) * 0.99)]]), flush=True)


async def _logger(url: str, passwords: dict, options: dict, interval: float, lazy: bool) -> None:
    """The inference-log path beside the hop: the stream and the log store's consumer as the stack creates them,
    an engine publishing a batch-1 log batch every 20 ms (JetStream, waiting for each ack) and a consumer that
    gathers 250 ms, then acknowledges each message, as the log store does."""
    import nats
    import nats.errors

    from shared import subjects
    from shared.bus import log_store_consumer_config, stream_configs
    from shared.settings import Settings

    options = {k: v for k, v in options.items() if k not in ("direct", "inline")}  # the engine's

    def connect(identity: str):
        return nats.connect(url, user=identity if passwords else None, password=passwords.get(identity),
                            inbox_prefix=bus_identities.inbox_prefix(identity), **options)

    admin = await connect("bootstrap")
    settings = Settings()
    for stream in stream_configs(settings):
        await admin.jetstream().add_stream(stream)
    await admin.jetstream().add_consumer(subjects.INFERENCE_LOGS_STREAM, log_store_consumer_config())
    await admin.close()
    engine, store = await connect("engine"), await connect("log_store")
    sub = await store.jetstream().pull_subscribe("logs.inference.>", durable=subjects.INFERENCE_LOGS_DURABLE,
                                                 stream=subjects.INFERENCE_LOGS_STREAM,
                                                 inbox_prefix=bus_identities.inbox_prefix("log_store").encode() + b".")

    async def consume() -> None:
        pending: list = []
        opened = 0.0
        while True:
            wait = 0.25 if not pending else max(0.01, opened + 0.25 - time.monotonic())
            if lazy and pending:  # the window is open: let it fill, then take what came in one fetch
                await asyncio.sleep(wait)
                wait = 0.01
            try:
                msgs = await sub.fetch(batch=1024 if lazy else 16, timeout=wait)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            if msgs and not pending:
                opened = time.monotonic()
            pending += msgs
            if pending and time.monotonic() - opened >= 0.25:
                for msg in pending:
                    await msg.ack()
                pending = []

    consumer = asyncio.create_task(consume())  # noqa: F841 - runs until the process ends
    js = engine.jetstream()
    payload = bytes(int(150_000 * interval))  # ~150 B per batch-1 record, ~1,000 records a second
    print("ready", flush=True)
    reader = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    while not reader.done():
        batch = secrets.token_hex(16)
        await js.publish("logs.inference.hop", payload, headers={"Nats-Msg-Id": batch}, timeout=10.0)
        await asyncio.sleep(interval)


class Variant:
    def __init__(self, spec: str, folder: Path) -> None:
        self.label, _, settings = spec.partition("=")
        self.options: dict[str, str] = {}
        self.conf: list[str] = []
        self.env: dict[str, str] = {}
        self.client: dict = {}
        for item in filter(None, settings.split(",")):
            key, _, value = item.partition("=")
            if key == "conf":
                self.conf.append(value)
            elif key == "env":
                self.env[value.split(":", 1)[0]] = value.split(":", 1)[1]
            elif key == "client":
                self.client[value.split(":", 1)[0]] = ast.literal_eval(value.split(":", 1)[1])
            else:
                self.options[key] = value
        self.folder = folder / self.label.replace(" ", "_")
        self.folder.mkdir(parents=True)
        self.passwords = {identity: secrets.token_urlsafe(16) for identity in bus_identities.identities()}
        self.port = _free_port()
        self.samples: list[tuple[float, float, dict[str, float]]] = []

    def start(self) -> None:
        auth = self.options.get("auth", "1") != "0"
        lines = [f"max_payload: {NATS_MAX_PAYLOAD}", *self.conf]
        if self.options.get("js", "1") != "0":
            sync = self.options.get("sync", "always")
            lines.append(f'jetstream {{\n  sync_interval: {sync}\n  store_dir: "{self.folder / "js"}"\n}}')
        if auth:
            (self.folder / "auth.conf").write_text(bus_identities.render_authorization(self.passwords))
            lines.append('include "auth.conf"')
        (self.folder / "nats.conf").write_text("\n".join(lines) + "\n")
        env = dict(os.environ) | self.env
        if "gomaxprocs" in self.options:
            env["GOMAXPROCS"] = self.options["gomaxprocs"]
        self.server = subprocess.Popen([find_binary("nats-server"), "--config", str(self.folder / "nats.conf"),
                                        "--addr", "127.0.0.1", "--port", str(self.port)], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"nats://127.0.0.1:{self.port}"
        client = json.dumps(self.client)
        for role in ("engine", "gateway"):
            process = subprocess.Popen([sys.executable, "-m", "bench.bus_hop", role, url, role if auth else "",
                                        self.passwords[role] if auth else "", client],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            setattr(self, role, process)
            assert process.stdout.readline().strip() == "ready"
        self.logger = None
        if self.options.get("logs", "0") != "0":
            self.logger = subprocess.Popen([sys.executable, "-m", "bench.bus_hop", "logger", url,
                                            json.dumps(self.passwords if auth else {}), client,
                                            str(float(self.options["logs"]) / 1000 if self.options["logs"] != "1"
                                                else 0.02), self.options.get("lazy", "0")],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert self.logger.stdout.readline().strip() == "ready"

    def round(self, count: int) -> None:
        pids = {"nats": self.server.pid, "engine": self.engine.pid, "gateway": self.gateway.pid}
        before = {role: _cpu(pid) for role, pid in pids.items()}
        switches = _switches(self.server.pid)
        self.gateway.stdin.write(f"{count}\n")
        self.gateway.stdin.flush()
        p50, p99 = json.loads(self.gateway.stdout.readline())
        cpu = {role: (_cpu(pid) - before[role]) / count * 1e6 for role, pid in pids.items()}
        cpu["nats switches"] = (_switches(self.server.pid) - switches) / count
        self.samples.append((p50, p99, cpu))

    def stop(self) -> None:
        """Stop what start() got to (it may have failed half way)."""
        for role in ("gateway", "engine", "logger"):
            process = getattr(self, role, None)
            if process is not None:
                process.stdin.close()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        server = getattr(self, "server", None)
        if server is not None:
            server.terminate()
            server.wait(10)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "logger":
        import uvloop

        uvloop.run(_logger(sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), float(sys.argv[5]),
                           sys.argv[6] == "1"))
        return
    if len(sys.argv) > 1 and sys.argv[1] in ("engine", "gateway"):
        import uvloop

        role, url, user, password, client = sys.argv[1:6]
        uvloop.run((_engine if role == "engine" else _gateway)(url, user, password, json.loads(client)))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--work-us", type=float, default=0.0, help="CPU each client spins per request (the "
                        "gateway's and the engine's own work: nats-server idles between messages)")
    args = parser.parse_args()
    os.environ["BUS_HOP_WORK_US"] = str(args.work_us)
    with tempfile.TemporaryDirectory(prefix="bus-hop-") as folder:
        variants = [Variant(spec, Path(folder)) for spec in (args.variant or ["default="])]
        try:
            for variant in variants:
                variant.start()
            for round_ in range(args.rounds):
                for variant in variants if round_ % 2 == 0 else reversed(variants):
                    variant.round(args.count)
        finally:
            for variant in variants:
                variant.stop()
        print(f"{args.rounds} rounds x {args.count} sequential requests, {args.work_us:g} us of work per request "
              f"in each client (load {os.getloadavg()[0]:.1f})")
        for variant in variants:
            p50 = sorted(s[0] for s in variant.samples)
            p99 = sorted(s[1] for s in variant.samples)
            roles = variant.samples[0][2].keys()
            per = {role: sorted(s[2][role] for s in variant.samples) for role in roles}
            print(f"  {variant.label:20s} p50 {p50[0] * 1e6:4.0f}-{p50[-1] * 1e6:4.0f} us  p99 {p99[0] * 1e6:4.0f}-"
                  f"{p99[-1] * 1e6:4.0f} us  " + "  ".join(
                f"{role} {v[0]:.0f}-{v[-1]:.0f}" if role != "nats switches" else f"{role} {v[0]:.1f}-{v[-1]:.1f}"
                for role, v in per.items()))


if __name__ == "__main__":
    main()
