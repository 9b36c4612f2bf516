"""The live feed: new events from the collector to any number of dashboard viewers.

`publish` never blocks and never fails: each subscriber has a bounded queue,
and a viewer that cannot keep up loses its oldest items (and is told how many),
so slow pages or many open feeds cannot delay acknowledgements to gates.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize)
        self.dropped = 0

    def get(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            return self.queue.get(timeout=timeout_s)
        except queue.Empty:
            return None


class LiveFeed:
    def __init__(self, maxsize: int = 500) -> None:
        self._maxsize = maxsize
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self.published = 0

    def publish(self, item: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._subs)
            self.published += 1
        for sub in subs:
            while True:
                try:
                    sub.queue.put_nowait(item)
                    break
                except queue.Full:
                    try:
                        sub.queue.get_nowait()
                        sub.dropped += 1
                    except queue.Empty:
                        pass

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription(self._maxsize)
        with self._lock:
            self._subs.add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)
