"""Dynamic batching across devices: a bounded queue whose reader takes frames a batch at a time.

A batch closes when it holds `max_batch` frames or `max_wait_ms` after its first frame arrived,
whichever comes first. Waits are on a condition variable, never sleep-polling.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Batcher(Generic[Item]):
    """Many writers (the MQTT network thread), one reader (the inference worker)."""

    def __init__(self, max_batch: int, max_wait_ms: float, capacity: int) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.capacity = capacity
        self._items: deque[tuple[float, Item]] = deque()
        self._changed = threading.Condition()
        self._closed = False

    def put(self, item: Item) -> bool:
        """Queue an item; False when the queue is full or closed (the caller counts the drop)."""
        with self._changed:
            if self._closed or len(self._items) >= self.capacity:
                return False
            self._items.append((time.monotonic(), item))
            self._changed.notify()
            return True

    def next_batch(self) -> list[Item]:
        """Block until a batch closes; after `close()`, drain what is left, then return []."""
        with self._changed:
            self._changed.wait_for(lambda: self._items or self._closed)
            if not self._items:
                return []
            deadline = self._items[0][0] + self.max_wait_s
            while len(self._items) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            count = min(self.max_batch, len(self._items))
            return [self._items.popleft()[1] for _ in range(count)]

    def close(self) -> None:
        """Refuse new items; the reader still receives the ones already queued."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._changed:
            return len(self._items)
