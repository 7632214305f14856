"""Optional packages a Railyard process declines, so that libraries which import them only because they are
installed do not load them (docs/performance.md, "memory": every process of the stack pays for what it imports).

- `pandas`: pyarrow imports it the first time `pa.array()` is given a numpy array (to check whether it is a
  pandas object): ~48 MiB of RSS in every replica, the gateway and the log store after their first request, and
  a pause of a second on that request. No service or replica uses pandas itself; Python steps and model
  conversions, which do, run in their own sandboxed processes (services/engine/worker.py,
  services/registry/worker.py), which do not decline it.
- `aiohttp`: nats-py imports it when it is installed, for NATS over WebSocket, which Railyard never uses (its
  URLs are nats://); the dev extra installs it (tritonclient[http]). ~10 MiB in every service and replica.
- `uvicorn`: FastStream imports it when it is installed, for serving a broker over ASGI, which Railyard does not
  do; only the gateway serves HTTP with it. ~3 MiB in every other process.
- pyarrow's remote filesystems (`pyarrow._s3fs`, `_gcsfs`, `_azurefs`, `_hdfs`): `pyarrow.parquet` imports
  `pyarrow.fs`, which imports each of them when it can; `_s3fs` maps libarrow_s3 and the AWS SDK's libraries.
  Railyard reads and writes Parquet in memory and talks S3 through `shared.s3_light`/minio: ~3.3 MiB of RSS in
  every engine replica (and the log store) once it wrote a segment (docs/performance.md item 31). `pyarrow.fs`
  handles their absence (the filesystem is then not offered), as for a pyarrow built without them.

One package is not declined but has its `__init__` deferred (`DEFERRED_INIT`):
- `unittest`: FastStream imports `unittest.mock` in every process that imports `faststream.nats` (its test broker is
  imported with the package, and every subscriber and publisher keeps a call recorder holding a `MagicMock`, used
  only under `TestNatsBroker`). `unittest.mock` itself needs only `unittest.util`, but importing it runs the
  package's `__init__`, which imports the test runner: `unittest.case`, `loader`, `result`, `suite`, `main`,
  `runner`, `signals` and `difflib`, ~11 ms of import and ~1 MiB of RSS in every service (docs/performance.md
  item 72). Here the package's submodules import as usual (the real `unittest.mock`, so FastStream's mocks are the
  real ones), and its `__init__` runs the first time anything else is read from it (`unittest.TestCase`), or a
  submodule's name that the `__init__` binds to something else (`unittest.main` is TestProgram, not the submodule
  `unittest.main`). Another thread reading the package while its `__init__` runs waits for it to end.

`decline_unused()` must run before anything imports nats, faststream or pyarrow: first thing in a process's entry
module. Importing a declined package then raises ModuleNotFoundError, exactly as when it is not installed, the
case those libraries handle.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from importlib.abc import Loader
from importlib.machinery import ModuleSpec, PathFinder

REMOTE_FILESYSTEMS = ("pyarrow._s3fs", "pyarrow._gcsfs", "pyarrow._azurefs", "pyarrow._hdfs")
# each package, with the names of its submodules that its __init__ binds to something else (read, they run it)
DEFERRED_INIT = {"unittest": frozenset({"main"})}


class _Declined:
    """A meta path finder that refuses some top-level packages (and their submodules) and some modules."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname.partition(".")[0] in self.names or fullname in self.names:
            raise ModuleNotFoundError(f"{fullname} is not used by this process (shared/lean_imports.py)",
                                      name=fullname)
        return None


class _DeferredPackage(types.ModuleType):
    """A package whose submodules import as usual and whose `__init__` runs when another attribute is first read."""

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__") and attr != "__all__":  # what the import system sets, or asks before it sets it
            raise AttributeError(attr)
        loader = self.__spec__.loader  # type: ignore[union-attr]
        if not isinstance(loader, _DeferredInitLoader):  # the __init__ ran meanwhile (another thread)
            return getattr(self, attr)
        submodule = f"{self.__name__}.{attr}"
        if attr not in loader.rebound and PathFinder.find_spec(submodule, self.__path__) is not None:
            return importlib.import_module(submodule)  # what `from unittest import mock` asks for
        if not loader.run_init(self):  # this thread is running the __init__: a name it has not bound yet
            raise AttributeError(f"partially initialized module {self.__name__!r} has no attribute {attr!r}")
        return getattr(self, attr)


class _DeferredInitLoader(Loader):
    def __init__(self, deferred: Loader, rebound: frozenset[str]) -> None:
        self.deferred = deferred
        self.rebound = rebound  # submodule names the __init__ binds to something else (unittest.main: TestProgram)
        self.lock = threading.RLock()
        self.running = False

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        return _DeferredPackage(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing yet: the real loader runs the package's `__init__` at the first read of what it defines."""

    def run_init(self, module: types.ModuleType) -> bool:
        """Run the package's `__init__` once; another thread's read waits for it to end (False: the caller is the
        thread running it, reading a name it has not bound yet). The module stays a _DeferredPackage until the
        `__init__` has run, so a name it has not bound yet sends every other thread here."""
        with self.lock:
            if self.running:
                return False
            if module.__spec__.loader is not self:  # type: ignore[union-attr]
                return True
            self.running = True
            try:
                self.deferred.exec_module(module)  # type: ignore[attr-defined]
            finally:
                self.running = False
            module.__class__ = types.ModuleType  # a plain package from now on (before the loader: see __getattr__)
            module.__spec__.loader = module.__loader__ = self.deferred  # type: ignore[union-attr]
            return True


class _DeferInit:
    """A meta path finder that gives some packages a deferred `__init__` (_DeferredPackage)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if fullname not in self.names:
            return None
        spec = PathFinder.find_spec(fullname)
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            return spec
        spec.loader = _DeferredInitLoader(spec.loader, DEFERRED_INIT[fullname])
        return spec


def decline_unused(serves_http: bool = False) -> None:
    """Keep this process from importing the packages above (uvicorn stays importable when `serves_http`) and defer
    `unittest`'s `__init__`."""
    names = {"pandas", "aiohttp", *REMOTE_FILESYSTEMS} | (set() if serves_http else {"uvicorn"})
    if not any(isinstance(finder, _Declined) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Declined(frozenset(names - set(sys.modules))))
        sys.meta_path.insert(0, _DeferInit(frozenset(set(DEFERRED_INIT) - set(sys.modules))))


class LazyModule(types.ModuleType):
    """Stands for a module until an attribute of it is first read, then imports it and takes its attributes
    over (later reads are plain attribute reads). For a package a process may never need while idle (numpy in
    the assay runner: ~10 MiB of RSS), used as `np = lazy_module("numpy")` where every use is inside a function;
    a module-level `np.ndarray` would import it at once (annotations are strings: `from __future__ import
    annotations`)."""

    def __getattr__(self, attr: str) -> object:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        # a plain module from now on (an attribute read costs ~8 ns, not the ~70 of a class-level __getattr__);
        # what the real module gains later (a submodule imported elsewhere) is still found through it (PEP 562)
        self.__dict__["__getattr__"] = lambda name: getattr(module, name)
        self.__class__ = types.ModuleType
        return getattr(module, attr)


def lazy_module(name: str) -> types.ModuleType:
    """The module `name` if it is already imported, a LazyModule for it otherwise."""
    return sys.modules.get(name) or LazyModule(name)

