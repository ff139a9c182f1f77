"""Where a sweep's study lives, and how workers share it without losing or repeating a trial.

Two storages:

- **the journal file** (default): `<workdir>/study.journal`, optuna's JournalStorage with a
  file backend; nothing to start. Workers on one host, or on hosts sharing the workdir's
  file system (its locks must work there), share it.
- **an RDB** (`--storage=postgresql://user@host/db`, or `sqlite:///path.db` on one host):
  optuna's RDBStorage; workers on any number of hosts pull trials from one study.

Three mechanisms keep the study exact with many workers and workers that die:

- **The claim lock.** A worker takes the next trial (and checks the study's size) only while
  it holds the study's claim lock, so workers never start more than the study asks for: a
  blocking flock on `<workdir>/.claim.lock` for the journal (beside the database for
  sqlite), a PostgreSQL advisory lock keyed by the study's name for PostgreSQL. A dead
  worker's lock is released with its process (its file descriptor, its connection).
- **Who is alive.** Journal: each worker holds a flock on `<workdir>/workers/<id>.lock` for
  its whole life and writes its id on the trials it runs; a running trial whose worker's lock
  is free is a dead worker's. RDB: optuna's heartbeats (`heartbeat_s`; a trial without one
  for 4 heartbeats is stale, `optuna.storages.fail_stale_trials`), recorded from a thread.
- **Retries.** A dead worker's trial is marked failed and the sweep (`hs_jax.sweep.study`)
  queues it again with the same parameters; the retry runs in the same trial workdir and
  resumes the run's checkpoint (or returns its finished results).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import socket
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

from hs_jax.runtime.errors import UserError

JOURNAL = "study.journal"
CLAIM_LOCK = ".claim.lock"
WORKERS = "workers"
DEFAULT_HEARTBEAT_S = 30
# A trial is stale after this many heartbeats without one (optuna's grace period).
GRACE_HEARTBEATS = 4
_RDB_SCHEMES = {"postgresql": "psycopg2", "sqlite": "sqlite3"}


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def hide_password(url: str) -> str:
    """The URL without its password, for logs and summaries."""
    if "://" not in url or "@" not in url.split("://", 1)[1]:
        return url
    head, rest = url.split("://", 1)
    auth, host = rest.rsplit("@", 1)
    user = auth.split(":", 1)[0]
    return f"{head}://{user}{':***' if ':' in auth else ''}@{host}"


def check_storage(url: str) -> None:
    """`--storage`: '' (the journal file) or a postgresql:// or sqlite:/// URL whose driver is
    installed; a UserError in one line otherwise. Imports no driver beyond a spec lookup."""
    if not url:
        return
    scheme = _scheme(url)
    if "://" not in url or scheme not in _RDB_SCHEMES:
        raise UserError(
            f"--storage={hide_password(url)}: expected a postgresql://user@host/db or "
            "sqlite:///file.db URL ('' = the journal file in --workdir)"
        )
    import importlib.util

    driver = url.split(":", 1)[0].split("+", 1)[1] if "+" in url.split(":", 1)[0] else None
    module = {"psycopg": "psycopg", "pg8000": "pg8000"}.get(driver or "", _RDB_SCHEMES[scheme])
    if importlib.util.find_spec(module) is None:
        raise UserError(
            f"--storage={hide_password(url)}: its driver {module} is not installed "
            f"(pip install {'psycopg2-binary' if module == 'psycopg2' else module})"
        )


def _flock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    fd = _flock(path)
    try:
        yield
    finally:
        os.close(fd)


@dataclasses.dataclass
class Storage:
    """An opened study storage: optuna's object, and this sweep's claim lock and liveness."""

    url: str  # '' = the journal file
    workdir: Path
    optuna_storage: object
    heartbeat_s: int | None  # RDB: heartbeats every heartbeat_s; journal: None (worker locks)
    _engine: object = None

    @property
    def journal(self) -> bool:
        return not self.url

    def describe(self) -> str:
        return f"journal {self.workdir / JOURNAL}" if self.journal else hide_password(self.url)

    @contextlib.contextmanager
    def claim_lock(self, study_name: str) -> Iterator[None]:
        """The study's claim lock (module docstring), held until the block ends."""
        if self.journal:
            with _file_lock(self.workdir / CLAIM_LOCK):
                yield
        elif _scheme(self.url) == "sqlite":
            db = Path(self.url.split(":///", 1)[1])
            with _file_lock(db.with_name(db.name + CLAIM_LOCK)):
                yield
        else:
            with _advisory_lock(self._engine, f"hs_jax.sweep:{study_name}"):
                yield


@contextlib.contextmanager
def _advisory_lock(engine, name: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock on `name`, held until the block ends."""
    from sqlalchemy import text

    key = zlib.crc32(name.encode())  # fits a bigint
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def open_storage(url: str, workdir: Path, heartbeat_s: int = DEFAULT_HEARTBEAT_S) -> Storage:
    """The journal file in `workdir` ('' url) or the RDB at `url` (`check_storage` first)."""
    import optuna

    if not url:
        from optuna.storages.journal import JournalFileBackend

        backend = JournalFileBackend(str(workdir / JOURNAL))
        return Storage("", workdir, optuna.storages.JournalStorage(backend), None)
    engine = None
    schema = contextlib.nullcontext()
    if _scheme(url) == "postgresql":
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, pool_pre_ping=True, poolclass=sqlalchemy.NullPool)
        # Workers started together would each create optuna's tables and collide on the
        # catalogue (a duplicate-key error): one at a time.
        schema = _advisory_lock(engine, "hs_jax.sweep:schema")
    with schema:
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True},
            heartbeat_interval=heartbeat_s,
            grace_period=GRACE_HEARTBEATS * heartbeat_s,
        )
    return Storage(url, workdir, storage, heartbeat_s, engine)


# ----------------------------------------------------------------------------- liveness


class Worker:
    """This process as a sweep worker: its id (host, pid, a random part) and, for the journal,
    the flock on `<workdir>/workers/<id>.lock` that says it is alive."""

    def __init__(self, workdir: Path, journal: bool):
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._dir = workdir / WORKERS
        self._fd = None
        if journal:
            self._fd = os.open(self._path(self.id), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _path(self, worker_id: str) -> Path:
        self._dir.mkdir(parents=True, exist_ok=True)
        return self._dir / f"{worker_id}.lock"

    def alive(self, worker_id: str | None) -> bool:
        """Whether the worker `worker_id` still runs (its lock is held); False for a trial
        that names none (its worker died between taking it and naming itself)."""
        if not worker_id:
            return False
        if worker_id == self.id:
            return True
        path = self._path(worker_id)
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)  # a dead worker's file: nobody holds it
        return False

    def close(self) -> None:
        if self._fd is not None:
            self._path(self.id).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class Heartbeat:
    """Records the RDB heartbeat of one running trial every `interval` seconds, from a daemon
    thread, until the block ends (a no-op for the journal)."""

    def __init__(self, storage: Storage, trial_id: int):
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while not self._stop.wait(self._storage.heartbeat_s):
            with contextlib.suppress(Exception):  # a missed beat: the next one may pass
                self._storage.optuna_storage.record_heartbeat(self._trial_id)

    def __enter__(self) -> Heartbeat:
        if self._storage.heartbeat_s:
            self._storage.optuna_storage.record_heartbeat(self._trial_id)
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
