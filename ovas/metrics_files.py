"""prometheus_client's multiprocess folder, kept bounded for as long as the server runs.

Each worker process writes its counters and histograms to files named after its pid
(`counter_<pid>.db`, `histogram_<pid>.db`), and `/metrics` sums every file in the folder.
prometheus_client's `mark_process_dead` removes only a dead worker's live gauges, so under a
master that replaces workers (crashes, `max_requests`, a SIGHUP reload) the folder grows by
two files per worker ever started, and every scrape reads them all (prometheus/client_python
issues #204, #275).

`retire_worker(pid)`, called by the master when a worker has exited, merges the worker's
counters, histograms and summaries into one archive file per type (`counter_archive.db`...),
with `MultiProcessCollector.merge(accumulate=False)`, as its docstring advises for writing
merged data back, and removes the worker's files: the totals stay right, and the folder holds
about two files per live worker plus one per type. The new archive is written beside the old
one and renamed over it, and the swap and the removal happen under an exclusive lock that
`scrape_lock` takes shared, so a scrape never counts a worker twice or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
from collections.abc import Iterator

LOCK_NAME = ".ovas-metrics.lock"
ARCHIVED_TYPES = ("counter", "histogram", "summary")


@contextlib.contextmanager
def _locked(directory: str, kind: int) -> Iterator[None]:
    with open(os.path.join(directory, LOCK_NAME), "a") as handle:
        fcntl.flock(handle, kind)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def scrape_lock(directory: str) -> contextlib.AbstractContextManager[None]:
    """Held (shared) while a scrape reads the folder's files."""
    return _locked(directory, fcntl.LOCK_SH)


def retire_worker(pid: int, directory: str | None = None) -> list[str]:
    """Fold the files of the exited worker `pid` into the archives, and remove them.

    `directory` defaults to `PROMETHEUS_MULTIPROC_DIR`. Returns the files removed. Call it
    only once the process is gone (gunicorn's `child_exit` hook), from one process at a time
    (the master)."""
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    directory = directory or os.environ["PROMETHEUS_MULTIPROC_DIR"]
    multiprocess.mark_process_dead(pid, directory)
    removed = []
    with _locked(directory, fcntl.LOCK_EX):
        for kind in ARCHIVED_TYPES:
            dead = os.path.join(directory, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = os.path.join(directory, f"{kind}_archive.db")
            sources = [f for f in (archive, dead) if os.path.exists(f)]
            merged = multiprocess.MultiProcessCollector.merge(sources, accumulate=False)
            partial = os.path.join(directory, f".{kind}_archive.partial")  # not a *.db
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
            out = MmapedDict(partial)
            try:
                for metric in merged:
                    for sample in metric.samples:
                        key = mmap_key(
                            metric.name,
                            sample.name,
                            list(sample.labels),
                            list(sample.labels.values()),
                            metric.documentation,
                        )
                        out.write_value(key, sample.value, 0.0)
            finally:
                out.close()
            os.replace(partial, archive)
            os.remove(dead)
            removed.append(dead)
        # Gauges of a dead process (other than the live ones already gone) mean nothing now.
        for stale in glob.glob(os.path.join(directory, f"gauge_*_{pid}.db")):
            os.remove(stale)
            removed.append(stale)
    return removed


def clear(directory: str) -> None:
    """Remove every metrics file (a new server's counters start from zero)."""
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)
