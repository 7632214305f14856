"""shared/lean_imports.py: what a service process declines stays out, and what it uses still works (each case in a
fresh interpreter: declining is for the whole process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_service_process_declines_pandas_aiohttp_and_uvicorn_and_pyarrow_still_works():
    out = run("""
        from shared.lean_imports import decline_unused
        decline_unused()
        import sys
        import numpy as np
        import pyarrow as pa
        import nats, faststream.nats  # import aiohttp and uvicorn when they may
        table = pa.table({"x": pa.array(np.arange(3.0))})  # pyarrow asks pandas whether this is a DataFrame
        for name in ("pandas", "aiohttp", "uvicorn"):
            try:
                __import__(name)
            except ModuleNotFoundError as exc:
                assert "lean_imports" in str(exc), exc
            else:
                raise AssertionError(name + " imported")
        print(table.column("x").to_pylist(), sorted(m for m in ("pandas", "aiohttp", "uvicorn") if m in sys.modules))
    """)
    assert out == "[0.0, 1.0, 2.0] []"


def test_pyarrow_parquet_works_without_the_remote_filesystems():
    """pyarrow.parquet imports pyarrow.fs, which would load libarrow_s3 (the AWS SDK) and the GCS, Azure and HDFS
    filesystems; a service process declines them and still writes and reads Parquet in memory."""
    out = run("""
        from shared.lean_imports import REMOTE_FILESYSTEMS, decline_unused
        decline_unused()
        import sys
        import pyarrow as pa
        import pyarrow.fs
        import pyarrow.parquet as pq
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"x": [1, 2]}), sink)
        back = pq.read_table(pa.BufferReader(sink.getvalue()))
        maps = open("/proc/self/maps").read()
        print(back.column("x").to_pylist(), [m for m in REMOTE_FILESYSTEMS if m in sys.modules],
              "libarrow_s3" in maps, hasattr(pyarrow.fs, "LocalFileSystem"))
    """)
    assert out == "[1, 2] [] False True"


def test_the_gateway_keeps_uvicorn_and_a_package_already_imported_stays():
    out = run("""
        import pandas
        from shared.lean_imports import decline_unused
        decline_unused(serves_http=True)
        import uvicorn, pandas.api
        print("ok")
    """)
    assert out == "ok"


def test_a_lazy_module_is_imported_by_its_first_attribute_read():
    """The assay runner starts without numpy; the first assay that runs imports it (shared.lean_imports.lazy_module)."""
    out = run("""
        import sys
        from services.assay_runner import app, compute
        assert "numpy" not in sys.modules, "numpy imported at start"
        assert compute.np.__name__ == "numpy" and "numpy" not in sys.modules  # the name is the stand-in's own
        values = compute.np.asarray([1.0, 2.0, 3.0])
        assert "numpy" in sys.modules and isinstance(values, compute.np.ndarray)
        from shared.lean_imports import lazy_module
        assert lazy_module("numpy") is sys.modules["numpy"]
        assert type(compute.np) is type(sys)  # a plain module once imported
        import numpy.polynomial  # a submodule imported later is still found through the stand-in
        assert compute.np.polynomial is sys.modules["numpy.polynomial"]
        print(compute.np.median(values))
    """)
    assert out == "2.0"


def test_unittest_init_is_deferred_and_faststream_test_broker_still_works():
    """FastStream imports unittest.mock with faststream.nats (its test broker, every subscriber's call recorder): a
    service process gets the real unittest.mock without unittest's test runner (case, loader, main, difflib), which
    the first read of anything else from the package still imports."""
    out = run("""
        from shared.lean_imports import decline_unused
        decline_unused()
        import asyncio, sys
        from faststream.nats import NatsBroker, TestNatsBroker
        broker = NatsBroker()

        @broker.subscriber("in")
        async def handle(body: dict) -> None:
            pass

        runner = sorted(m for m in ("unittest.case", "unittest.loader", "unittest.main", "difflib") if m in sys.modules)

        async def under_test():
            async with TestNatsBroker(broker, connect_only=False) as test_broker:
                await test_broker.publish({"x": 1}, "in")
                handle.mock.assert_called_once_with({"x": 1})
                await handle.assert_called_once_with({"x": 1})
                from unittest.mock import MagicMock
                return isinstance(handle.mock, MagicMock)

        assert asyncio.run(under_test())  # FastStream's own mocks, real ones
        import unittest
        assert issubclass(unittest.TestCase, object)
        assert type(unittest) is type(sys) and "unittest.case" in sys.modules and len(unittest.__all__) > 10
        print(runner)
    """)
    assert out == "[]"


def test_a_deferred_unittest_gives_every_name_what_the_package_binds():
    """`unittest.main` is TestProgram, not the submodule of that name (read before anything else ran the
    `__init__`), and every other public name and submodule the `__init__` binds reads as in a plain interpreter."""
    describe = """
        import sys, types, unittest
        def describe(name):
            try:
                value = getattr(unittest, name)
            except AttributeError:
                return name + ": -"
            if isinstance(value, types.ModuleType):
                return f"{name}: {value.__name__}"
            kind = getattr(value, "__qualname__", None) or "a " + type(value).__qualname__  # defaultTestLoader
            return f"{name}: {getattr(value, '__module__', '?')}.{kind}"
        names = ["main", "case", "loader", "result", "runner", "signals", "suite", "util", "mock",
                 "TestCase", "IsolatedAsyncioTestCase", "TestProgram"]
    """
    plain = run(describe + """
        import unittest.mock
        print([describe(name) for name in names + sorted(unittest.__all__)])
    """)
    deferred = run("""
        from shared.lean_imports import decline_unused
        decline_unused()
        import faststream.nats  # imports unittest.mock
    """ + describe + """
        from unittest import main
        first = describe("main")  # the first read of a name that is also a submodule's
        print([first] + [describe(name) for name in names[1:] + sorted(unittest.__all__)])
        assert main is unittest.TestProgram, main
    """)
    assert "'main: unittest.main.TestProgram'" in plain and "'mock: unittest.mock'" in plain
    assert deferred == plain


def test_a_second_thread_reading_unittest_while_its_init_runs_waits_for_it():
    """One thread's first read runs unittest's `__init__` (held here just before its last import, signals); another
    thread's read of a name that import binds waits for the `__init__` to end instead of raising AttributeError."""
    out = run("""
        from shared.lean_imports import decline_unused
        decline_unused()
        import sys, threading
        import unittest.mock
        import unittest
        inside, reading, read = threading.Event(), threading.Event(), threading.Event()

        class HoldSignals:
            def find_spec(self, fullname, path=None, target=None):
                if fullname == "unittest.signals" and threading.current_thread() is threading.main_thread():
                    inside.set()
                    # the other thread reads now: a read that raises sets `read` at once; on a waiting read this
                    # bound, counted from the read's start, lets the init go on
                    reading.wait(60)
                    read.wait(1.0)
                return None

        sys.meta_path.insert(0, HoldSignals())
        seen = []

        def reader():
            inside.wait(60)
            reading.set()
            try:
                seen.append(unittest.installHandler.__qualname__)
            except AttributeError as exc:
                seen.append(repr(exc))
            read.set()

        thread = threading.Thread(target=reader)
        thread.start()
        unittest.TestCase
        thread.join(60)
        print(seen, unittest.installHandler.__qualname__)
    """)
    assert out == "['installHandler'] installHandler"
