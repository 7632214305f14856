"""What a backend keeps across restarts, in one SQLite file in its model directory.

- `cache`: the per-project key/value strings behind `LabelStudioMLBase.get/set` (the label config, the model
  version, `train_output`, anything the model stores), as label_studio_ml keeps them;
- `versions`: every training run with its outcome, so `/versions` lists what exists and a failed run is visible;
- `tasks`: the annotated tasks received through webhooks, which `fit(annotations, ...)` receives.

A training run writes through a `PendingWrites` layer: its `set` calls only reach the file when the run
succeeded, so a `fit` that raises leaves the previous model's state as it was.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (project_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                                  PRIMARY KEY (project_id, key));
CREATE TABLE IF NOT EXISTS versions (project_id TEXT NOT NULL, job_id TEXT NOT NULL, version TEXT,
                                     event TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
                                     started_at REAL NOT NULL, finished_at REAL,
                                     PRIMARY KEY (project_id, job_id));
CREATE TABLE IF NOT EXISTS tasks (project_id TEXT NOT NULL, task_id TEXT NOT NULL, body TEXT NOT NULL,
                                  PRIMARY KEY (project_id, task_id));
"""


LOCK_FILE = "railyard-ml.lock"


class ModelDirInUse(RuntimeError):
    """Another process serves the model directory already."""


_CLAIMS: dict[Path, list] = {}  # model directory -> [its lock file's descriptor, claims in this process]
_CLAIMS_LOCK = threading.Lock()


def claim_model_dir(model_dir: str | Path) -> Callable[[], None]:
    """Take a model directory for this process (an exclusive `flock` on its `railyard-ml.lock`, which holds the
    pid), or raise ModelDirInUse naming the process that has it: a serving process takes its directory's runs left
    queued or running for interrupted (the queue lived in the previous process's memory), so a second process on the
    same directory marked the first one's runs failed, and both trained into and served from the same state. The
    kernel drops the lock when the process ends, however it ends. Claims in one process add up (the CLI's, then
    the app's own at its start; several apps in one test process); returns the function that gives one back."""
    path = Path(model_dir).resolve()
    with _CLAIMS_LOCK:
        claim = _CLAIMS.get(path)
        if claim is None:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ModelDirInUse(
                    f"the model directory {path} is in use by another railyard-ml process (pid {holder}); two "
                    "processes on one directory would mark each other's training runs interrupted: stop that one, "
                    "or give this one its own --model-dir / MODEL_DIR") from None
            except OSError as exc:  # a file system without locks (ENOLCK: some network mounts): serve, unguarded
                os.close(fd)
                logger.warning("the model directory %s cannot be locked (%s): a second railyard-ml process on it "
                               "would not be refused", path, exc)
                return lambda: None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            claim = _CLAIMS[path] = [fd, 0]
        claim[1] += 1
    released = False

    def release() -> None:
        nonlocal released
        with _CLAIMS_LOCK:
            if released:
                return
            released = True
            claim[1] -= 1
            if claim[1] == 0 and _CLAIMS.get(path) is claim:
                del _CLAIMS[path]
                os.close(claim[0])  # the lock goes with the descriptor

    return release


class Store:
    """The SQLite file of one backend (safe to share between the server's threads)."""

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.model_dir / "railyard-ml.db"
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a training run's write
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a crash loses at most the last writes
        return db

    # --- key/value cache
    def get(self, project_id: str, key: str) -> str | None:
        with self._lock, self._connect() as db:
            row = db.execute("SELECT value FROM cache WHERE project_id = ? AND key = ?", (project_id, key)).fetchone()
        return row[0] if row else None

    def set_many(self, project_id: str, values: dict[str, str | None]) -> None:
        with self._lock, self._connect() as db:
            for key, value in values.items():
                if value is None:
                    db.execute("DELETE FROM cache WHERE project_id = ? AND key = ?", (project_id, key))
                else:
                    db.execute("REPLACE INTO cache (project_id, key, value) VALUES (?, ?, ?)",
                               (project_id, key, value))

    def set(self, project_id: str, key: str, value: str | None) -> None:
        self.set_many(project_id, {key: value})

    # --- training runs
    def queue_run(self, project_id: str, job_id: str, event: str) -> None:
        """A webhook's run, listed `queued` from the moment its job id is answered until it starts (or is folded
        into a later run and dropped): a client polling `/versions` for "no run going" must not stop early."""
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO versions (project_id, job_id, event, status, started_at) VALUES (?, ?, ?, ?, ?)",
                       (project_id, job_id, event, "queued", time.time()))

    def drop_queued(self, project_id: str, job_ids: Iterable[str]) -> None:
        """Queued runs folded into a later one: they never run (as before they were listed, they are not)."""
        with self._lock, self._connect() as db:
            db.executemany("DELETE FROM versions WHERE project_id = ? AND job_id = ? AND status = 'queued'",
                           [(project_id, job_id) for job_id in job_ids])

    def start_run(self, project_id: str, job_id: str, event: str) -> None:
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO versions (project_id, job_id, event, status, started_at) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (project_id, job_id) DO UPDATE SET status = excluded.status, "
                       "started_at = excluded.started_at",
                       (project_id, job_id, event, "running", time.time()))

    def finish_run(self, project_id: str, job_id: str, *, version: str | None, error: str | None,
                   values: dict[str, str | None] | None = None, status: str | None = None) -> None:
        """Record a run's end; on success its pending cache writes land in the same transaction."""
        with self._lock, self._connect() as db:
            for key, value in (values or {}).items():
                if value is None:
                    db.execute("DELETE FROM cache WHERE project_id = ? AND key = ?", (project_id, key))
                else:
                    db.execute("REPLACE INTO cache (project_id, key, value) VALUES (?, ?, ?)",
                               (project_id, key, value))
            db.execute("UPDATE versions SET status = ?, version = ?, error = ?, finished_at = ? "
                       "WHERE project_id = ? AND job_id = ?",
                       (status or ("failed" if error else "ok"), version, error, time.time(), project_id, job_id))

    def end_run(self, project_id: str, job_id: str, event: str, error: str) -> None:
        """A run that failed outside `fit` (listed or not yet): recorded `failed` with its error."""
        now = time.time()
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO versions (project_id, job_id, event, status, error, started_at, finished_at) "
                       "VALUES (?, ?, ?, 'failed', ?, ?, ?) ON CONFLICT (project_id, job_id) DO UPDATE SET "
                       "status = 'failed', error = excluded.error, finished_at = excluded.finished_at",
                       (project_id, job_id, event, error, now, now))

    def end_interrupted(self) -> int:
        """Runs a previous process left `queued` or `running` (it stopped or crashed first: the queue and the
        run's thread lived in its memory, and a queued run's event data with them): recorded `failed`, saying so,
        so that a client waiting for "no run going" does not wait for ever. How many there were."""
        with self._lock, self._connect() as db:
            return db.execute(
                "UPDATE versions SET error = 'interrupted: the ML backend stopped before this run ' || "
                "CASE status WHEN 'queued' THEN 'started' ELSE 'ended' END || '; the next training run trains on "
                "every stored annotation', status = 'failed', finished_at = ? WHERE status IN ('queued', 'running')",
                (time.time(),)).rowcount

    def last_job_id(self) -> int:
        """The highest numeric job id recorded (0 without any)."""
        with self._lock, self._connect() as db:
            row = db.execute("SELECT MAX(CAST(job_id AS INTEGER)) FROM versions").fetchone()
        return int(row[0] or 0)

    def runs(self, project_id: str) -> list[dict]:
        """A project's runs in the order they were asked for. A job id is its submission time in microseconds
        (strictly increasing, `Backend._new_job_id`); `started_at` is not the order: it holds the queue time and is
        overwritten when the run starts, so a run queued first and started later would sort after one still queued."""
        with self._lock, self._connect() as db:
            rows = db.execute("SELECT job_id, version, event, status, error, started_at, finished_at FROM versions "
                              "WHERE project_id = ? ORDER BY CAST(job_id AS INTEGER), job_id",
                              (project_id,)).fetchall()
        keys = ("job_id", "version", "event", "status", "error", "started_at", "finished_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def projects(self) -> list[str]:
        """Every project this backend has state for."""
        with self._lock, self._connect() as db:
            rows = db.execute("SELECT DISTINCT project_id FROM cache ORDER BY project_id").fetchall()
        return [project_id for (project_id,) in rows]

    # --- annotated tasks
    def upsert_tasks(self, project_id: str, tasks: Iterable[dict]) -> None:
        with self._lock, self._connect() as db:
            for task in tasks:
                db.execute("REPLACE INTO tasks (project_id, task_id, body) VALUES (?, ?, ?)",
                           (project_id, str(task["id"]), json.dumps(task)))

    def annotated_tasks(self, project_id: str) -> list[dict]:
        with self._lock, self._connect() as db:
            rows = db.execute("SELECT body FROM tasks WHERE project_id = ? ORDER BY CAST(task_id AS INTEGER), task_id",
                              (project_id,)).fetchall()
        return [json.loads(body) for (body,) in rows]

    def replace_tasks(self, project_id: str, tasks: list[dict]) -> None:
        with self._lock, self._connect() as db:
            db.execute("DELETE FROM tasks WHERE project_id = ?", (project_id,))
            for task in tasks:
                db.execute("INSERT INTO tasks (project_id, task_id, body) VALUES (?, ?, ?)",
                           (project_id, str(task["id"]), json.dumps(task)))


class ProjectCache:
    """`get/set` of one project, straight to the file."""

    def __init__(self, store: Store, project_id: str) -> None:
        self.store = store
        self.project_id = project_id

    def get(self, key: str) -> str | None:
        return self.store.get(self.project_id, key)

    def set(self, key: str, value: str | None) -> None:
        self.store.set(self.project_id, key, value)


class PendingWrites(ProjectCache):
    """`get/set` of one project during a training run: writes are held until the run succeeds."""

    def __init__(self, store: Store, project_id: str) -> None:
        super().__init__(store, project_id)
        self.writes: dict[str, str | None] = {}

    def get(self, key: str) -> str | None:
        if key in self.writes:
            return self.writes[key]
        return super().get(key)

    def set(self, key: str, value: str | None) -> None:
        self.writes[key] = value
