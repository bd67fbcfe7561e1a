"""The on-disk spool: usage events waiting for delivery, in SQLite (stdlib ``sqlite3``, WAL).

Used by ``FluxrateClient(durability="spool" | "strict", spool_path=DIR)``:

* each process owns one database in ``DIR``, ``spool-<pid>-<random>.sqlite3``, guarded by
  ``spool-<pid>-<random>.lock`` on which it holds an exclusive ``flock`` for as long as it
  lives (the kernel releases it when the process dies, however it dies);
* a process *adopts* the files of processes that are gone (their lock can be taken): it copies
  their events into its own database (``INSERT OR IGNORE`` on the idempotency key, one
  transaction per chunk), then deletes their files. A crash half-way leaves the events in both
  files; they carry the same idempotency keys, so Fluxrate still records each once;
* every file (database, ``-wal``, ``-shm``, lock) is created ``0600``; the rows hold the events
  as their failure-log ``event`` object (never the API key or the access token).

Rows have a ``state``: ``0`` = also queued in this process's memory (``strict`` mode writes every
event in ``track()`` before queueing it; the row is deleted once the API acknowledged it), ``1``
= waiting on disk only (the *backlog*: spilled there because the API was down, the queue was
over its high-water mark, retries ran out or the shutdown deadline passed). The dispatcher
reads the backlog back in ``id`` order.

Commits use ``synchronous=NORMAL`` in WAL mode: a commit is a ``write()`` to the WAL, no
``fsync``. It survives the death of the process (``SIGKILL``, OOM), not a power cut or kernel
crash of the host for the last moments before the OS flushed its cache.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fluxrate_web.core._log import log_limited, logger
from fluxrate_web.core.events import UsageEvent, utc_timestamp

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: durability modes are unavailable
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DURABILITY_MODES",
    "Spool",
    "SpoolError",
    "SpoolFile",
    "list_spool_files",
    "read_rows",
]

DURABILITY_MODES = ("memory", "spool", "strict")

_STEM = re.compile(r"^(spool-(\d+)-[0-9a-f]{8,32})\.(sqlite3|lock)$")
_SIDE_FILES = ("", "-wal", "-shm", "-journal")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    state INTEGER NOT NULL,
    reason TEXT NOT NULL,
    spooled_at TEXT NOT NULL,
    data TEXT NOT NULL
)
"""
_CHUNK = 1000  # rows per write transaction (bounds how long a strict track() may wait)
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


class SpoolError(Exception):
    """The spool directory or database cannot be used."""


def _row_data(event: UsageEvent) -> str:
    return _encode(event.to_dict())


def _create_private(path: str, *, exclusive: bool = True) -> int:
    """Create ``path`` with mode 0600 exactly: ``os.open`` with 0600 (the umask can only narrow
    it) then ``fchmod``. No umask change: the umask is per process, other threads create files
    too. SQLite creates ``-wal`` and ``-shm`` with the mode of the database file."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    if exclusive:
        flags |= os.O_EXCL
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:  # pragma: no cover
        os.close(fd)
        raise
    return fd


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover
        raise SpoolError("spool files need POSIX file locks (fcntl.flock)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _chmod_private(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        mode = os.stat(path).st_mode
        if stat.S_IMODE(mode) != 0o600:
            os.chmod(path, 0o600)


def _connect(path: str, *, uri: bool = False, new: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=10.0, uri=uri
    )
    try:
        if new:  # small pages: a one-row commit writes ~3 KB to the WAL instead of ~12 KB
            conn.execute("PRAGMA page_size=1024")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA journal_size_limit=8388608")
    except BaseException:
        conn.close()
        raise
    return conn


def _remove_database(db_path: str) -> None:
    for suffix in _SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db_path + suffix)


# --------------------------------------------------------------------------- inspection


@dataclass(frozen=True, slots=True)
class SpoolFile:
    """One spool database in a directory, as ``fluxrate-web spool status`` shows it."""

    stem: str
    db_path: str
    lock_path: str
    pid: int
    live: bool  # its lock is held: a running process owns it
    size: int  # bytes of the database and its -wal


def list_spool_files(directory: str | os.PathLike[str]) -> list[SpoolFile]:
    """The spool files in ``directory`` (live or orphaned), oldest pid first. Never takes a
    lock it keeps: a probe lock on an orphan is released at once."""
    directory = os.fspath(directory)
    stems: dict[str, int] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        m = _STEM.match(name)
        if m:
            stems[m.group(1)] = int(m.group(2))
    found = []
    for stem, pid in sorted(stems.items(), key=lambda kv: (kv[1], kv[0])):
        db_path = os.path.join(directory, stem + ".sqlite3")
        lock_path = os.path.join(directory, stem + ".lock")
        live = False
        try:
            fd = os.open(lock_path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            try:
                live = not _try_lock(fd)
            finally:
                os.close(fd)  # releases the probe lock, if we took it
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.stat(db_path + suffix).st_size
        found.append(SpoolFile(stem, db_path, lock_path, pid, live, size))
    return found


def read_rows(
    db_path: str, *, limit: int | None = None
) -> Iterator[tuple[int, str, str, str, str]]:
    """``(id, reason, spooled_at, data, key)`` of every row of one spool database, in order."""
    if not os.path.exists(db_path):
        return
    conn = sqlite3.connect(f"file:{db_path}?mode=rw", uri=True, isolation_level=None, timeout=10.0)
    try:
        sql = "SELECT id, reason, spooled_at, data, key FROM events ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        yield from conn.execute(sql)
    finally:
        conn.close()


def count_rows(db_path: str) -> tuple[int, str | None]:
    """``(rows, oldest spooled_at)`` of one spool database."""
    if not os.path.exists(db_path):
        return 0, None
    conn = sqlite3.connect(f"file:{db_path}?mode=rw", uri=True, isolation_level=None, timeout=10.0)
    try:
        row = conn.execute("SELECT count(*), min(spooled_at) FROM events").fetchone()
        return int(row[0]), row[1]
    finally:
        conn.close()


@contextlib.contextmanager
def claim(directory: str, stem: str, *, remove: bool = True) -> Iterator[str | None]:
    """Take the lock of the spool ``stem`` in ``directory`` if its process is gone: yields the
    database path (it may not exist), or ``None`` when a live process holds it. When the block
    ends without an exception and ``remove`` is true, the files are deleted (database first,
    then the lock, so a scanner never sees a database without its lock while we hold it)."""
    db_path = os.path.join(directory, stem + ".sqlite3")
    lock_path = os.path.join(directory, stem + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if not os.path.exists(db_path):
            yield None
            return
        # a database without its lock (an adopter died between the two unlinks, or a copied
        # directory): create the lock, exclusively, and take it
        try:
            fd = _create_private(lock_path)
        except FileExistsError:
            yield None
            return
    try:
        if not _try_lock(fd):
            yield None
            return
        try:  # the name still points at the file we locked (not unlinked meanwhile)
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            yield None
            return
        yield db_path
        if remove:
            _remove_database(db_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
    finally:
        os.close(fd)


_TMP_LOCK = re.compile(r"^\.spool-\d+-[0-9a-f]{8,32}\.lock\.tmp$")


def orphan_stems(directory: str) -> list[str]:
    """Stems of the spool files in ``directory`` (live or not), sorted. Removes the temporary
    lock file of a process that died while creating its spool (it held nothing yet)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if _TMP_LOCK.match(name):
            _remove_dead_tmp(os.path.join(directory, name))
    return sorted({m.group(1) for m in map(_STEM.match, names) if m})


def _remove_dead_tmp(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:  # a minute old and unlocked: its creator died before it renamed it
        if time.time() - os.fstat(fd).st_mtime > 60 and _try_lock(fd):
            with contextlib.suppress(OSError):
                os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- this process's spool

_live: weakref.WeakSet[Spool] = weakref.WeakSet()
_inherited: list[object] = []  # a forked child's copies of its parent's spools: never closed


class Spool:
    """This process's spool database in ``directory``, and adoption of dead processes' files.

    Thread-safe: one SQLite connection, every use under one lock. Opened lazily (first use).
    Methods called on the request path (``append``) never raise.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.pid = os.getpid()
        self.stem = f"spool-{self.pid}-{secrets.token_hex(4)}"
        self.db_path = os.path.join(self.directory, self.stem + ".sqlite3")
        self.lock_path = os.path.join(self.directory, self.stem + ".lock")
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None  # dispatcher thread only
        self._lock_fd = -1
        self._next_id = 0  # row ids are ours, increasing: the backlog is read in id order
        self.closed = False
        self.broken = False  # could not be opened: callers fall back to the failure log
        self.adopted = 0  # rows adopted from dead processes' files
        # backlog rows written by other threads (queue full) that the dispatcher has not
        # counted yet: read and reset with the count, under the lock, so none counts twice
        self._unannounced = 0

    def __repr__(self) -> str:
        return f"Spool({self.db_path!r})"

    # ------------------------------------------------------------------ opening

    def open(self) -> bool:
        """Create the directory, the lock and the database (once). False if it cannot."""
        if self._conn is not None:
            return True
        if self.closed or self.broken:
            return False
        with self._lock:
            if self._conn is not None:
                return True
            if self.closed or self.broken:
                return False
            try:
                self._open_locked()
            except (OSError, sqlite3.Error) as exc:
                self.broken = True
                logger.error(
                    "cannot use the spool directory %s (%s); undeliverable events go to the "
                    "failure log instead",
                    self.directory,
                    exc,
                )
                return False
        return True

    def _open_locked(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        # the lock first, under a temporary name, locked before it gets its real name: a
        # scanning process never sees an unlocked lock file of a live process
        tmp = os.path.join(self.directory, f".{self.stem}.lock.tmp")
        fd = _create_private(tmp)
        try:
            if not _try_lock(fd):  # pragma: no cover - a brand-new file
                raise SpoolError(f"cannot lock {tmp}")
            os.write(fd, f"pid={self.pid} host={socket.gethostname()}\n".encode())
            os.rename(tmp, self.lock_path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            os.close(_create_private(self.db_path))
            conn = _connect(self.db_path, new=True)
            try:
                conn.execute(_SCHEMA)
                # checkpoints run on the dispatcher thread (checkpoint()); this is a backstop
                conn.execute("PRAGMA wal_autocheckpoint=10000")
            except BaseException:
                conn.close()
                raise
        except BaseException:
            _remove_database(self.db_path)
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
            os.close(fd)
            raise
        for suffix in ("-wal", "-shm"):
            _chmod_private(self.db_path + suffix)
        self._lock_fd = fd
        self._conn = conn
        _live.add(self)

    # ------------------------------------------------------------------ writing

    def append(self, event: UsageEvent) -> bool:
        """``strict``: write ``event`` (state 0) before it is queued. Request path: one
        INSERT, committed (a WAL write, no fsync). Never raises; False if not written."""
        conn = self._conn
        if conn is None:
            if not self.open():
                return False
            conn = self._conn
            assert conn is not None
        try:
            data = _row_data(event)
            with self._lock:
                if self.closed:
                    return False
                self._next_id += 1
                conn.execute(
                    "INSERT OR IGNORE INTO events (id, key, state, reason, spooled_at, data) "
                    "VALUES (?, ?, 0, 'unsent', ?, ?)",
                    (self._next_id, event.idempotency_key, event.timestamp, data),
                )
            return True
        except Exception as exc:
            log_limited(
                logging.ERROR,
                "spool-append",
                "cannot write a usage event to the spool %s (%s); it is queued in memory only",
                self.db_path,
                exc,
            )
            return False

    def spill(self, items: Iterable[tuple[UsageEvent, str]], *, foreign: bool = False) -> int:
        """Put events in the backlog (state 1, at the end of the order), replacing a state-0
        row of the same key. Returns how many were written; raises on a database error.
        ``foreign``: written from outside the dispatcher thread (see :meth:`take_unannounced`)."""
        rows = [(e.idempotency_key, reason, utc_timestamp(), _row_data(e)) for e, reason in items]
        if not rows or not self.open():
            return 0
        written = 0
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            with self._lock:
                conn = self._usable()
                first = self._next_id + 1
                self._next_id += len(chunk)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT OR REPLACE INTO events (id, key, state, reason, spooled_at, data) "
                        "VALUES (?, ?, 1, ?, ?, ?)",
                        [(first + i, *row) for i, row in enumerate(chunk)],
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                if foreign:
                    self._unannounced += len(chunk)
            written += len(chunk)
        return written

    def take_unannounced(self) -> int:
        """Backlog rows written by other threads since the last call (or recount)."""
        with self._lock:
            n, self._unannounced = self._unannounced, 0
        return n

    def ack(self, keys: list[str]) -> None:
        """Delete the rows of events the API has answered for good."""
        if not keys or self._conn is None:
            return
        for start in range(0, len(keys), _CHUNK):
            chunk = [(k,) for k in keys[start : start + _CHUNK]]
            with self._lock:
                conn = self._usable()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("DELETE FROM events WHERE key = ?", chunk)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

    def load(self, after_id: int, limit: int) -> list[tuple[int, str, str]]:
        """Backlog rows with ``id > after_id`` in order: ``(id, key, data)``."""
        if self._conn is None:
            return []
        with self._lock:
            conn = self._usable()
            return list(
                conn.execute(
                    "SELECT id, key, data FROM events WHERE state = 1 AND id > ? "
                    "ORDER BY id LIMIT ?",
                    (after_id, limit),
                )
            )

    def backlog(self) -> int:
        """Rows waiting on disk only (state 1). Resets the unannounced count (the rows written
        by other threads are in this count)."""
        if self._conn is None:
            return 0
        with self._lock:
            row = self._usable().execute("SELECT count(*) FROM events WHERE state = 1").fetchone()
            self._unannounced = 0
        return int(row[0])

    def rows(self) -> int:
        if self._conn is None:
            return 0
        with self._lock:
            row = self._usable().execute("SELECT count(*) FROM events").fetchone()
        return int(row[0])

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for, nor blocks, a writer), on
        a connection of its own so that a strict ``track()`` never waits for it."""
        if self._conn is None or self.closed:
            return
        conn = self._checkpointer
        if conn is None:
            conn = self._checkpointer = _connect(self.db_path)
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _usable(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None or self.closed:
            raise SpoolError("the spool is closed")
        return conn

    # ------------------------------------------------------------------ adoption

    def adopt(self) -> int:
        """Copy the events of every dead process's spool in the directory into ours (as
        backlog), then delete their files. Returns the rows adopted. Never raises."""
        if self.closed or not self.open():
            return 0
        total = 0
        try:
            stems = [stem for stem in orphan_stems(self.directory) if stem != self.stem]
        except OSError as exc:
            log_limited(logging.ERROR, "spool-scan", "cannot list %s: %s", self.directory, exc)
            return 0
        for stem in stems:
            try:
                total += self._adopt_one(stem)
            except Exception:
                logger.exception("could not adopt the spool %s", stem)
        if total:
            self.adopted += total
            logger.warning(
                "adopted %d usage event(s) from the spool of process(es) that ended; "
                "delivering them",
                total,
            )
        return total

    def _adopt_one(self, stem: str) -> int:
        with claim(self.directory, stem) as db_path:
            if db_path is None:
                return 0  # its process is alive (or another process is adopting it)
            return self._copy_from(db_path) if os.path.exists(db_path) else 0

    def _copy_from(self, db_path: str) -> int:
        try:
            other = _connect(f"file:{db_path}?mode=rw", uri=True)
        except sqlite3.Error as exc:
            return self._quarantine(db_path, exc)
        try:
            try:
                other.execute("SELECT 1 FROM events LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                other.close()
                return self._quarantine(db_path, exc)
            copied = 0
            last = 0
            while True:
                rows = other.execute(
                    "SELECT id, key, reason, spooled_at, data FROM events WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (last, _CHUNK),
                ).fetchall()
                if not rows:
                    break
                last = rows[-1][0]
                with self._lock:
                    conn = self._usable()
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        before = conn.total_changes
                        first = self._next_id + 1
                        self._next_id += len(rows)
                        conn.executemany(
                            "INSERT OR IGNORE INTO events (id, key, state, reason, spooled_at, "
                            "data) VALUES (?, ?, 1, ?, ?, ?)",
                            [(first + i, k, r, at, d) for i, (_, k, r, at, d) in enumerate(rows)],
                        )
                        copied += conn.total_changes - before
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
        finally:
            other.close()
        return copied

    def _quarantine(self, db_path: str, exc: Exception) -> int:
        target = f"{db_path}.corrupt-{int(time.time())}"
        for suffix in _SIDE_FILES:
            with contextlib.suppress(OSError):
                os.rename(db_path + suffix, target + suffix)
        logger.error(
            "the spool %s cannot be read (%s); moved aside to %s, its events are not delivered",
            db_path,
            exc,
            target,
        )
        return 0

    # ------------------------------------------------------------------ closing

    def close(self) -> int:
        """Close the database; delete our files if no event is left, else keep them for the
        next process to adopt (our lock goes with the close). Returns the rows left."""
        with self._lock:
            if self.closed:
                return 0
            self.closed = True
            conn, self._conn = self._conn, None
            fd, self._lock_fd = self._lock_fd, -1
            checkpointer, self._checkpointer = self._checkpointer, None
        _live.discard(self)
        if checkpointer is not None:
            checkpointer.close()
        left = 0
        if conn is not None:
            try:
                left = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
                if left:
                    conn.execute("UPDATE events SET state = 1 WHERE state = 0")
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                left = -1
                logger.error("could not close the spool %s cleanly: %s", self.db_path, exc)
            finally:
                conn.close()
            if left == 0:
                _remove_database(self.db_path)
        if fd >= 0:
            if left == 0:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.lock_path)
            os.close(fd)
        if left > 0:
            logger.warning(
                "%d usage event(s) are kept in the spool %s; the next process using this "
                "spool_path delivers them (or: fluxrate-web spool drain %s)",
                left,
                self.db_path,
                self.directory,
            )
        return left

    def forget_in_child(self) -> None:
        """In a forked child: drop our copy of the parent's lock (the parent keeps its own)
        and never touch the parent's database connection again."""
        self.closed = True
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        _inherited.append((self._conn, self._checkpointer))  # the parent's: never closed here
        self._conn = None
        self._checkpointer = None
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    for spool in list(_live):
        if spool.pid != os.getpid():
            spool.forget_in_child()
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def has_spool_files(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds spool files (of any process): one ``listdir``."""
    try:
        return any(_STEM.match(name) for name in os.listdir(directory))
    except OSError:
        return False
