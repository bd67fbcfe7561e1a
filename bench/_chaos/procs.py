"""Process trees on Linux (``/proc``): the RSS of an app server and its workers."""

from __future__ import annotations

import os
import threading
import time


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    rest = data[data.rfind(b")") + 2 :].split()
    return int(rest[1]) if len(rest) > 1 else None


def descendants(root: int) -> list[int]:
    """``root`` and every process below it (workers of a gunicorn master, ...)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        parent = _ppid(int(name))
        if parent is not None:
            children.setdefault(parent, []).append(int(name))
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(root: int) -> int:
    """Sum of the RSS of ``root`` and its descendants (shared pages counted in each)."""
    return sum(rss_bytes(pid) for pid in descendants(root))


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._root: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-rss", daemon=True)
        self._started = time.monotonic()

    def watch(self, root: int | None) -> None:
        """Follow this process tree from now on (a restarted app has a new root)."""
        self._root = root

    def start(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> int:
        root = self._root
        value = tree_rss(root) if root is not None else 0
        if value:
            self.samples.append((time.monotonic() - self._started, value))
        return value

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    @property
    def peak(self) -> int:
        return max((value for _t, value in self.samples), default=0)

    def between(self, start: float, end: float) -> list[int]:
        """Samples taken between ``start`` and ``end`` seconds after :meth:`start`."""
        return [value for t, value in self.samples if start <= t <= end]

    def now(self) -> float:
        return time.monotonic() - self._started
