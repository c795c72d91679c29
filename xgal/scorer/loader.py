"""A prefetching batch reader: a background thread copies the next batches out of the pool's
memory maps, and finds their bad samples, while the engine computes the current one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from xgal.core.samples import sample_problems
from xgal.pool.format import Pool


@dataclass
class Batch:
    start: int  # pool index of the first sample
    ids: np.ndarray
    images: np.ndarray
    rois: np.ndarray
    labels: np.ndarray | None = None
    # (row, reason) of each sample that must not be scored (`sample_problems`), in row order.
    problems: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def without_problems(self) -> Batch:
        """The batch less its bad samples (`start` stays the first row's pool index)."""
        keep = np.ones(len(self), dtype=bool)
        keep[[row for row, _ in self.problems]] = False
        labels = self.labels[keep] if self.labels is not None else None
        return Batch(self.start, self.ids[keep], self.images[keep], self.rois[keep], labels)


_DONE = object()


class PrefetchLoader:
    """Iterate over samples [start, stop) of `pool` in batches, `prefetch` batches ahead."""

    def __init__(
        self,
        pool: Pool,
        batch_size: int = 64,
        *,
        start: int = 0,
        stop: int | None = None,
        prefetch: int = 2,
        with_labels: bool = False,
    ) -> None:
        stop = pool.count if stop is None else stop
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= start <= stop <= pool.count:
            raise ValueError(f"shard [{start}, {stop}) is outside the pool of {pool.count} samples")
        self.pool, self.batch_size, self.start, self.stop = pool, batch_size, start, stop
        self.prefetch = max(1, prefetch)
        self.keys = ("ids", "images", "rois") + (("labels",) if with_labels else ())

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def _read(self, lo: int) -> Batch:
        data = self.pool.read(lo, min(lo + self.batch_size, self.stop), self.keys)
        problems = sample_problems(data["rois"], data["images"])
        return Batch(lo, data["ids"], data["images"], data["rois"], data.get("labels"), problems)

    def __iter__(self) -> Iterator[Batch]:
        q: queue.Queue[object] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: object) -> bool:
            """Hand `item` to the consumer; False once it has stopped (it takes nothing more)."""
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            # Every put watches `stop`, the last ones too: a consumer that stops in the last
            # batches would otherwise leave this thread blocked on a full queue for good.
            try:
                for lo in range(self.start, self.stop, self.batch_size):
                    if not put(self._read(lo)):
                        return
                put(_DONE)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                put(exc)

        thread = threading.Thread(target=produce, name="xgal-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            # A consumer that stops early (cancellation, error) must not leave the reader
            # blocked on a full queue.
            stop.set()
            thread.join(timeout=5)
