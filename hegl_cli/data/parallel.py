"""One function applied to many items in worker processes, with a progress bar, results in order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm


def parallel_map(func: Callable, items: list, workers: int, desc: str, progress: bool) -> Iterator:
    """``func(item)`` for every item, in order; ``workers`` processes (0 = one per core; small jobs run
    in this process)."""
    workers = workers or (os.cpu_count() or 1)
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers <= 1 or len(items) < 32:
            for item in items:
                yield func(item)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(func, items, chunksize=16):
                    yield result
                    bar.update()
    finally:
        bar.close()
