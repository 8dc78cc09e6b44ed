"""Dynamic batching: a batch closes at max_batch frames or max_wait_ms after its first frame."""

from __future__ import annotations

import threading
import time

from gateway.batcher import Batcher


class TestBatcher:
    def test_full_batch_closes_at_once(self) -> None:
        """max_batch queued frames come out together without waiting for the deadline."""
        batcher: Batcher[int] = Batcher(max_batch=4, max_wait_ms=10_000, capacity=100)
        for i in range(6):
            batcher.put(i)
        start = time.monotonic()
        assert batcher.next_batch() == [0, 1, 2, 3]
        assert time.monotonic() - start < 1.0

    def test_partial_batch_closes_at_deadline(self) -> None:
        """A lone frame waits max_wait_ms, no longer, then goes alone."""
        batcher: Batcher[int] = Batcher(max_batch=8, max_wait_ms=50, capacity=100)
        batcher.put(1)
        start = time.monotonic()
        assert batcher.next_batch() == [1]
        assert 0.03 <= time.monotonic() - start < 1.0

    def test_frames_arriving_during_the_wait_join_the_batch(self) -> None:
        """Frames from other producers that arrive before the deadline share the batch."""
        batcher: Batcher[int] = Batcher(max_batch=3, max_wait_ms=5_000, capacity=100)
        batcher.put(0)
        threading.Timer(0.05, lambda: (batcher.put(1), batcher.put(2))).start()
        assert batcher.next_batch() == [0, 1, 2]

    def test_full_queue_refuses(self) -> None:
        """Beyond capacity put() returns False so the caller can count the drop."""
        batcher: Batcher[int] = Batcher(max_batch=2, max_wait_ms=1, capacity=2)
        assert batcher.put(1) and batcher.put(2)
        assert not batcher.put(3)
        assert len(batcher) == 2

    def test_close_drains_then_ends(self) -> None:
        """After close() the reader gets what was queued, then an empty batch; new frames are refused."""
        batcher: Batcher[int] = Batcher(max_batch=10, max_wait_ms=10_000, capacity=100)
        batcher.put(1)
        batcher.close()
        assert not batcher.put(2)
        assert batcher.next_batch() == [1]
        assert batcher.next_batch() == []

    def test_close_wakes_a_waiting_reader(self) -> None:
        """A reader blocked on an empty queue returns when the batcher closes."""
        batcher: Batcher[int] = Batcher(max_batch=10, max_wait_ms=10, capacity=100)
        threading.Timer(0.05, batcher.close).start()
        assert batcher.next_batch() == []
