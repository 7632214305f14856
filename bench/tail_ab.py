"""The batch-1 tail of two source trees (or settings), on two stacks up at once, rounds alternated.

    python -m bench.tail_ab --tree s8start=build/s8start [--tree head=.] [--rounds 6] [--count 1500]
                            [--forms records,Arrow,OIP v2] [--env [label:]RAILYARD_...=value]
                            [--load CONNECTIONS:ROWS ...] [--seconds 4] [--settle] [--cpus label:CPUS:role,role]

Each tree runs its own embedded stack (`railyard up` from that tree as the working directory, with a Python of
its own: see tree_python), ccfraud deployed on each; then `rounds` rounds, each running `count` sequential batch-1
requests on one connection against every stack in turn (`round_order`: two stacks' order reversed every other
round, three or more rotated), so the machine's other work weighs on each alike. Prints p50, p99 and p99/p50 per
tree and form, pooled and per round, and writes the samples (start on CLOCK_MONOTONIC, latency) to
build/tail/ab.json for bench/tail_trace.py's describe.
A label may be given twice with different `--env` (label:NAME=value) and the same tree: settings A/B.

`--load 32:1 --load 4:1000` adds, after each stack's sequential run of a form (none with `--count 0`), a window
of `--seconds` of that many keep-alive connections sending batch-1 (or 1,000-row) requests, as `make bench-peers`
measures its 8- and 32-connection and batch-1000 figures (bench/loadgen.py's `concurrent`); printed as req/s and
rows/s per round, with the load generator's CPU a request (the machine's speed, docs/performance.md item 93).
`--settle` starts each stack's turn as bench-peers starts a form: every stack's log path idle (its rows stored),
the page cache written back, the machine's busy CPU under 0.25 cores. `--cpus label:1:log_store,weed,postgres`
confines those processes (every thread; fine roles as `--nice`) to those CPUs (sched_setaffinity).

With two or more stacks, each run starts with its replica's log batcher idle (the other stacks' runs in between
last longer than a window), so its segment flushes fall `engine_segment_ms` apart from the run's start: the
share of requests above 2x the run's p50 in the first AFTER_WINDOW s after each window's end is printed against
the share elsewhere (docs/performance.md item 86: a flush's cost to the requests beside it).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvloop

from bench import loadgen
from bench.cpu_account import _own_cpu, _role
from bench.peers import logpath
from bench.peers.harness import RailyardDeployer, cmdline, descendants, settle, write_back
from bench.tail_trace import OUT, autogroup, describe, fine_role, quiet_group, set_slice, timed
from shared.settings import LogSettings
from tests.models import ccfraud_onnx
from tests.stack import REPO, RunningStack, stack_env

VENVS = Path(tempfile.gettempdir()) / "railyard-tailab-venvs"
# the editable installs of the repository's own packages (.venv's finders map them to /work/main): a tree's venv
# puts these folders of the tree on sys.path instead
OWN_PACKAGES = (".", "client", "ml_backend")


def tree_python(tree: Path) -> str:
    """A Python that imports `tree`'s code in every process it starts, the sandboxed engine worker included.

    .venv's editable install maps `services` and `shared` to the repository through a finder its .pth installs;
    PYTHONPATH alone does not reach the sandbox (it gets a fixed environment, and sees only the paths on the
    engine's sys.path, so an old tree's worker found the finder's /work/main hidden: "No module named services").
    So each other tree gets a venv of its own (made once, kept under VENVS by the tree's path): no packages of its
    own, one .pth naming the tree's folders first and then .venv's site-packages as a plain folder (its .pth files,
    the editable finders among them, are not run), and .venv's console binaries (nats-server, weed) beside its
    python, where shared.embedded looks for them. Every child runs `sys.executable -m ...`, so all of them, and the
    sandbox (code_paths mounts the folders on sys.path), import the tree's code."""
    tree = tree.resolve()
    if tree == REPO.resolve():
        return sys.executable
    site = Path(sysconfig.get_path("purelib"))
    venv = VENVS / hashlib.sha1(str(tree).encode()).hexdigest()[:12]
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                     check=True, capture_output=True, text=True).stdout.strip())
        lines = [str(tree / name) for name in OWN_PACKAGES if (tree / name).is_dir()] + [str(site)]
        (target / "00-railyard-tree.pth").write_text("\n".join(lines) + "\n")
        for binary in Path(sys.executable).parent.iterdir():
            if binary.is_file() and binary.read_bytes()[:4] == b"\x7fELF" and not binary.name.startswith("python"):
                (venv / "bin" / binary.name).symlink_to(binary.resolve())
    found = subprocess.run([str(python), "-c", "import services, shared; print(services.__path__[0])"], cwd="/",
                           check=True, capture_output=True, text=True).stdout.strip()
    if Path(found).resolve() != (tree / "services").resolve():
        raise SystemExit(f"{python} imports services from {found}, not {tree}")
    return str(python)


AFTER_WINDOW = 0.02


def after_windows(run: list[tuple[float, float]], window: float) -> tuple[float, float]:
    """(% of requests above 2x their run's p50 within AFTER_WINDOW after a window's end, % elsewhere); `run` is
    one label and form's samples, runs told apart by gaps of more than 0.3 s."""
    starts = np.array([s for s, _ in run])
    lat = np.array([v for _, v in run])
    near, slow = np.zeros(len(lat), bool), np.zeros(len(lat), bool)
    for part in np.split(np.arange(len(lat)), np.nonzero(np.diff(starts) > 0.3)[0] + 1):
        offset = starts[part] - starts[part[0]]
        near[part] = (offset >= window) & (offset % window < AFTER_WINDOW)
        slow[part] = lat[part] > 2 * np.median(lat[part])
    inside = 100 * slow[near].mean() if near.any() else 0.0
    return inside, 100 * slow[~near].mean()


def round_order(labels: list[str], index: int) -> list[str]:
    """Round `index`'s order of the stacks: two reversed every other round; more rotated by one a round, so that each
    takes each place as often (reversed, the middle one of three was always between the others: in session 43's
    slot it read 15-18 % lower at 32 connections and batch-1000 than the same tree at an end, docs/performance.md
    item 110)."""
    if len(labels) <= 2:
        return list(labels) if index % 2 == 0 else list(labels)[::-1]
    shift = index % len(labels)
    return list(labels[shift:]) + list(labels[:shift])


def confine(root: int, cpus: set[int], roles: list[str]) -> int:
    """Every thread of `root`'s descendants of those fine roles (tail_trace.fine_role) on `cpus` only: the threads
    counted (what they start later inherits it: PostgreSQL's backends, Go's threads)."""
    count = 0
    for pid in descendants(root):
        if fine_role(pid) in roles:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)
                    count += 1
    return count


def settled(targets: dict[str, dict[str, Any]], form: str, most: float = 5.0) -> None:
    """As bench-peers before a form: every stack's log path idle (at most 60 s), the page cache written back, the
    machine idle (harness.settle; here at most `most` s, not its 30: other people's work would wait out every turn)."""
    for label, by_form in targets.items():
        backlog = by_form[form].backlog
        waited, emptied = logpath.wait_until(lambda backlog=backlog: logpath.idle(*backlog()), 60.0, 0.2)
        if not emptied:
            print(f"    {label}: log path not idle after {waited:.1f} s; measured anyway", flush=True)
    write_back()
    with contextlib.suppress(TimeoutError):
        uvloop.run(asyncio.wait_for(settle(), most))


def window(target: Any, load: str, seconds: float) -> tuple[float, float]:
    """(requests a second, the load generator's CPU us a request) of one `load` (CONNECTIONS:ROWS) window, after 3
    sequential requests of it (as bench-peers' batch-1000 figure)."""
    connections, rows = (int(part) for part in load.split(":"))
    request = target.one if rows == 1 else target.thousand
    uvloop.run(loadgen.sequential(target.url, request, 3))
    own, started = _own_cpu(), time.perf_counter()
    rate = uvloop.run(loadgen.concurrent(target.url, request, connections, seconds))
    return rate, (_own_cpu() - own) / max(rate * (time.perf_counter() - started), 1) * 1e6


def _rate(rate: float, load: str) -> str:
    """A window's requests a second as printed: rows/s in thousands for 1,000-row requests."""
    return f"{rate:,.0f}k rows/s" if load.endswith(":1000") else f"{rate:,.0f} req/s"


def start(tree: Path, settings: dict[str, str], folder: Path) -> RunningStack:
    """`railyard up` from `tree`'s code on fresh ports."""
    data = folder / "data"
    env = stack_env(data) | settings
    env.pop("PYTHONPATH", None)
    output = folder / "up.log"
    with open(output, "ab") as handle:
        process = subprocess.Popen([tree_python(tree), "-m", "shared.cli", "up"], cwd=tree, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return RunningStack(process=process, data_dir=data, env=env, output=output)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", action="append", default=[], help="label=path (default head=the repo)")
    parser.add_argument("--env", action="append", default=[], help="[label:]RAILYARD_...=value (no label: every stack)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--forms", default="records")
    parser.add_argument("--out", default=str(OUT / "ab.json"))
    parser.add_argument("--slice", action="append", default=[],
                        help="label:microseconds:role,role - the scheduler slice of those processes' threads")
    parser.add_argument("--batch", action="append", default=[],
                        help="label:role,role - those processes' threads under SCHED_BATCH (no wake-up preemption)")
    parser.add_argument("--nice", action="append", default=[],
                        help="label:N:role,role - those processes (fine roles: log_store, weed, postgres, ...) at nice "
                             "N, every thread and its autogroup (a background-priority A/B without a new tree)")
    parser.add_argument("--shares", type=int, default=0,
                        help="run this process and the stacks in a cgroup (v1 cpu) of that cpu.shares: a high value "
                             "(100000) keeps the rest of the machine's work off them, as on a quiet machine")
    parser.add_argument("--load", action="append", default=[],
                        help="CONNECTIONS:ROWS (ROWS 1 or 1000): a throughput window after each sequential run")
    parser.add_argument("--seconds", type=float, default=4.0, help="each --load window's length")
    parser.add_argument("--settle", action="store_true",
                        help="before each stack's turn: every log path idle, sync, an idle machine (as bench-peers)")
    parser.add_argument("--cpus", action="append", default=[],
                        help="label:CPULIST:role,role - those processes (fine roles, as --nice) on those CPUs only "
                             "(CPULIST: 1 or 0,1)")
    parser.add_argument("--verbose", action="store_true", help="describe every run")
    args = parser.parse_args()
    trees = {t.split("=", 1)[0]: Path(t.split("=", 1)[1]).resolve() for t in args.tree} or {"head": REPO}
    settings: dict[str, dict[str, str]] = {label: {} for label in trees}
    for item in args.env:
        label, setting = item.split(":", 1) if item.split(":", 1)[0] in trees else ("", item)
        for name in [label] if label else trees:
            settings[name][setting.split("=", 1)[0]] = setting.split("=", 1)[1]
    forms = args.forms.split(",")
    for load in args.load:
        if load.count(":") != 1 or load.split(":")[1] not in ("1", "1000") or int(load.split(":")[0]) < 1:
            raise SystemExit(f"--load {load!r}: CONNECTIONS:ROWS, ROWS 1 or 1000")
    OUT.mkdir(parents=True, exist_ok=True)
    group = quiet_group(args.shares) if args.shares else contextlib.nullcontext()
    with group:
        run(args, trees, settings, forms)


def run(args: argparse.Namespace, trees: dict[str, Path], settings: dict[str, dict[str, str]],
        forms: list[str]) -> None:
    folders = {label: Path(tempfile.mkdtemp(prefix=f"railyard-tailab-{label}-")) for label in trees}
    stacks: dict[str, RunningStack] = {}
    try:
        for label, tree in trees.items():
            folders[label].chmod(0o755)
            stacks[label] = start(tree, settings[label], folders[label])
        targets = {}
        model = ccfraud_onnx()
        for label, stack in stacks.items():
            stack.wait_healthy(240)
            deployer = RailyardDeployer(stack)
            deployer.upload("ccfraud", model)
            found = deployer.targets(deployer.deploy("tail-0", ["ccfraud"], {}))
            targets[label] = {form: found[form] for form in forms}
            for pid in descendants(stack.process.pid):  # which tree each Python process imports from
                line = cmdline(pid)
                if _role(pid) in ("gateway", "nats", "engine replica"):
                    with contextlib.suppress(OSError):
                        slices = {t: Path(f"/proc/{pid}/task/{t}/sched").read_text().split("se.slice")[1]
                                  .split(":")[1].split()[0] for t in os.listdir(f"/proc/{pid}/task")}
                        print(f"  {label}: {_role(pid)} slices (ns) {sorted(set(slices.values()))}")
                if "python" in line and " -m " in line:  # a child may name "-m" otherwise (python3 -mvenv)
                    with contextlib.suppress(OSError):
                        paths = [e for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                                 if e.startswith(b"PYTHONPATH=")]
                        print(f"  {label}: {line.split(' -m ')[1][:40]:40s} cwd {os.readlink(f'/proc/{pid}/cwd')}"
                              f" {paths[0].decode() if paths else 'no PYTHONPATH'}")
        for item in args.slice:
            label, micros, roles = item.split(":", 2)
            for pid in descendants(stacks[label].process.pid):
                if _role(pid) in roles.split(","):
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        with contextlib.suppress(OSError):
                            set_slice(int(tid), int(micros) * 1000)
                    print(f"  {label}: slice {micros} us for {_role(pid)} ({pid})")
        for item in args.batch:
            label, roles = item.split(":", 1)
            for pid in descendants(stacks[label].process.pid):
                if _role(pid) in roles.split(","):
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        with contextlib.suppress(OSError):
                            os.sched_setscheduler(int(tid), os.SCHED_BATCH, os.sched_param(0))
            print(f"  {label}: SCHED_BATCH for {roles}")
        for item in args.nice:
            label, level, roles = item.split(":", 2)
            for pid in descendants(stacks[label].process.pid):
                if fine_role(pid) in roles.split(","):
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        with contextlib.suppress(OSError):
                            os.setpriority(os.PRIO_PROCESS, int(tid), int(level))
                    with contextlib.suppress(OSError):
                        Path(f"/proc/{pid}/autogroup").write_text(level)
            print(f"  {label}: nice {level} for {roles}: "
                  + ", ".join(f"{fine_role(pid)} {autogroup(pid)}" for pid in descendants(stacks[label].process.pid)))
        for item in args.cpus:
            label, cpus, roles = item.split(":", 2)
            confined = confine(stacks[label].process.pid, {int(c) for c in cpus.split(",")}, roles.split(","))
            print(f"  {label}: CPUs {cpus} for {roles}: {confined} threads")
        for label in trees:
            for form in forms:
                uvloop.run(timed(targets[label][form].url, targets[label][form].one, 300))
        samples = {(label, form): [] for label in trees for form in forms}
        ratios = {key: [] for key in samples}
        p50s = {key: [] for key in samples}
        loads: dict[tuple[str, str, str], list[tuple[float, float]]] = {
            (label, form, load): [] for label in trees for form in forms for load in args.load}
        order = list(trees)
        for index in range(args.rounds):
            for form in forms:
                for label in round_order(order, index):
                    target = targets[label][form]
                    if args.settle:
                        settled(targets, form)
                    if args.count:
                        run = uvloop.run(timed(target.url, target.one, args.count))
                        samples[label, form] += run
                        lat = [v for _, v in run]
                        ratios[label, form].append(float(np.percentile(lat, 99) / np.percentile(lat, 50)))
                        p50s[label, form].append(float(np.percentile(lat, 50)) * 1e3)
                        if args.verbose:
                            print(f"round {index} {label} {form}:")
                            describe(run)
                    for load in args.load:
                        loads[label, form, load].append(window(target, load, args.seconds))
            print(f"round {index}: " + "  ".join(
                f"{label}/{form} " + (f"{ratios[label, form][-1]:.2f}" if args.count else "")
                + "".join(f" {load} {_rate(loads[label, form, load][-1][0], load)}" for load in args.load)
                for label in trees for form in forms), flush=True)
        print(f"batch 1, one connection, {args.rounds} rounds x {args.count} requests, trees {trees}, {settings}")
        for (label, form), run in samples.items() if args.count else ():
            lat = np.array([v for _, v in run]) * 1e3
            p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
            r = ratios[label, form]
            window_s = float(settings[label].get("RAILYARD_LOGS__ENGINE_SEGMENT_MS",
                                                 LogSettings().engine_segment_ms)) / 1000
            after = ""
            if len(trees) > 1 and window_s <= 5:
                inside, elsewhere = after_windows(run, window_s)
                after = (f"  >2x p50: {inside:.1f} % in the {AFTER_WINDOW * 1e3:.0f} ms after a window, "
                         f"{elsewhere:.2f} % else")
            print(f"  {label:10s} {form:8s} p50 {p50:.3f} ms (round median {statistics.median(p50s[label, form]):.3f}) "
                  f" p99 {p99:.3f} ms  p99/p50 {p99 / p50:.2f}  "
                  f"per round {min(r):.2f}-{max(r):.2f} median {statistics.median(r):.2f}{after}")
        first = order[0]
        for (label, form, load), figures in loads.items():
            rates, costs = [f[0] for f in figures], [f[1] for f in figures]
            versus = ""
            if label != first:  # round by round against the first label's window of the same round
                higher = sum(a > b for a, b in zip(rates, [f[0] for f in loads[first, form, load]], strict=True))
                versus = f"  above {first} in {higher} of {len(rates)} rounds"
            print(f"  {label:10s} {form:8s} {load:>7s}: median {_rate(statistics.median(rates), load)} "
                  f"({_rate(min(rates), load)}-{_rate(max(rates), load)}), load generator "
                  f"{statistics.median(costs):.0f} us a request{versus}")
        Path(args.out).with_suffix(".loads.json").write_text(json.dumps(
            {f"{label}|{form}|{load}": figures for (label, form, load), figures in loads.items()}))
        Path(args.out).write_text(json.dumps({f"{label}|{form}": run for (label, form), run in samples.items()}))
    finally:
        for stack in stacks.values():
            with contextlib.suppress(Exception):
                stack.stop()
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
