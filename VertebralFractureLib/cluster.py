"""Running the cases of a batch on a Dask distributed cluster (``batch --workers N`` / ``batch --scheduler ADDRESS``).

Each case is one task: :func:`.batch.process_case` on a worker, which publishes ``OUT/CASE/`` as one set and returns
the case's outcome; the client (the ``batch`` process) writes ``summary.csv`` and the cohort tables from the
outcomes. So a worker must see the input and output folders under the same paths as the client (one machine, or a
shared file system).

- ``--workers N``: a cluster of N worker processes on this machine, one thread each, listening on 127.0.0.1 only,
  each allowed ``--memory-per-worker`` (default: the memory available at the start, shared equally); a worker that
  passes it is stopped by its nanny and replaced.
- ``--scheduler tcp://HOST:PORT``: the workers of an existing cluster (started with ``dask scheduler`` and
  ``dask worker ADDRESS --nthreads 1``, each with the package installed).

At most as many cases are handed out as the cluster has worker threads, so a worker holds only the case it runs:
when it dies (killed, out of memory, a crash in a library) only that case is lost. It is handed out once more; when
its worker dies again it is reported as failed with that reason. (On an existing cluster its scheduler may retry it
first: ``distributed.scheduler.allowed-failures``.) A case that fails with an error is not retried: the same input
fails the same way.

The cluster starts on a thread of its own (:func:`start_in_background`) and its workers import the pipeline before
their first case, while the client scans the input; it is closed on another thread while the client writes the
cohort files (:meth:`ClusterHandle.close_in_background`).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

from VertebralFractureLib.errors import InputError

LOCAL_HOST = "127.0.0.1"
"""The embedded cluster listens on the loopback interface only: nothing outside this machine can reach it."""
RETRIES_AFTER_WORKER_DEATH = 1
"""A case whose worker died is handed out this many more times before it is reported as failed."""
PROGRESS_INTERVAL_S = 10.0
"""Longest silence of the progress display while cases are running."""
CONNECT_TIMEOUT_S = 10.0
"""How long ``--scheduler`` waits for the scheduler to answer."""
MIN_MEMORY_PER_WORKER = 2 * 1024**3
"""Below this a worker cannot hold a 512 x 512 x 600 CT with its working copies: refused."""
WORKER_DIED = "its worker process died twice while running it (out of memory, killed, or a crash in a library)"
SCHEDULER_ADDRESS = re.compile(r"^(tcp|tls)://[^\s/:]+(:\d+)?$|^(tcp|tls)://\[[0-9a-fA-F:]+\](:\d+)?$")

log = logging.getLogger(__name__)


def parse_memory(text: str) -> int:
    """"6GB", "6 GiB", "1500MB", "4e9" -> bytes (Dask's parser; decimal and binary units)."""
    from dask.utils import parse_bytes

    try:
        value = int(parse_bytes(text))
    except (ValueError, TypeError) as error:
        raise InputError(None, f"--memory-per-worker {text!r}: give a size such as 6GB ({error})") from None
    return value


def default_memory_per_worker(workers: int) -> int:
    """The memory available now, shared equally (a quarter GiB kept for the batch process itself)."""
    from VertebralFractureLib.io import available_memory_bytes

    available = available_memory_bytes()
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    return max(0, (available - 256 * 1024**2) // max(1, workers))


def format_bytes(value: int) -> str:
    return f"{value / 1024**3:.1f} GiB"


@dataclass
class ClusterHandle:
    """A connected client and, for ``--workers``, the cluster this process started (closed with it)."""

    client: object
    cluster: object | None
    description: str
    _closing: object = field(default=None, repr=False)

    def threads(self) -> int:
        try:
            return int(sum(self.client.nthreads().values()))
        except Exception:  # the scheduler went away: the caller's next wait reports it
            return 0

    def close_in_background(self) -> None:
        """Begin :meth:`close` on another thread (the workers take about a second to stop): the client writes its
        cohort files meanwhile. :meth:`close` then waits for it."""
        if self._closing is None:
            self._closing = threading.Thread(target=self._close, name="cluster-close", daemon=True)
            self._closing.start()

    def close(self) -> None:
        if self._closing is None:
            self._close()
        else:
            self._closing.join()

    def _close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is None:
                continue
            try:
                thing.close()
            except Exception as error:  # closing must not hide the batch's own outcome
                log.debug("closing %s: %s", thing, error)


def _import_distributed():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError(None, "--workers and --scheduler need the Dask distributed package: "
                               "pip install 'VertebralFracture[batch]'") from None


def check_start(workers: int | None, scheduler: str | None, memory_per_worker: str | None = None) -> int | None:
    """Refuse unusable cluster options at once, before a slow scan of the input; returns the memory per local
    worker in bytes (None with ``scheduler``)."""
    _import_distributed()
    if scheduler is not None:
        if not SCHEDULER_ADDRESS.match(scheduler):
            raise InputError(scheduler, "is not a Dask scheduler address; give tcp://HOST:PORT")
        return None
    if workers < 1:
        raise InputError(None, f"--workers {workers}: give at least 1")
    memory = parse_memory(memory_per_worker) if memory_per_worker else default_memory_per_worker(workers)
    if memory < MIN_MEMORY_PER_WORKER:
        raise InputError(None, f"{format_bytes(memory)} per worker is below the {format_bytes(MIN_MEMORY_PER_WORKER)} "
                               f"a CT needs; use fewer --workers or a larger --memory-per-worker")
    return memory


def start(workers: int | None, scheduler: str | None, memory_per_worker: str | None = None,
          warm_up: tuple[str, ...] = ()) -> ClusterHandle:
    """Connect to ``scheduler`` or start ``workers`` local worker processes; refuses unusable values at once.
    ``warm_up``: modules every worker imports before its first case (see :func:`import_modules`)."""
    memory = check_start(workers, scheduler, memory_per_worker)
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
        except (OSError, TimeoutError) as error:
            raise InputError(scheduler, f"no Dask scheduler answers there ({' '.join(str(error).split())})") from None
        threads = int(sum(client.nthreads().values()))
        handle = ClusterHandle(client, None, f"Dask scheduler {scheduler} ({threads} worker threads now)")
        _warm_up(handle, warm_up)
        return handle
    settings = {
        # A worker's death is reported at once; the retry is ours (RETRIES_AFTER_WORKER_DEATH), counted per case.
        "distributed.scheduler.allowed-failures": 0,
        # Libraries' warnings about slow garbage collection and event loops are not the batch's business.
        "distributed.admin.tick.limit": "1h",
        "distributed.worker.memory.target": False,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": 0.95,
        # The workers' statistical profiler samples every thread 100 times a second: CPU a case does not need.
        "distributed.worker.profile.enabled": False,
        # Every process of the cluster wakes every 20 ms to time its event loop (for the warnings silenced above),
        # and the scheduler every 100 ms to move queued tasks between workers (none are queued: see run_cases).
        # Together with the resource monitor that was 6.5 % of a core on an idle cluster of 2 workers, taken from
        # the cases' cores; 1.5 % with these.
        "distributed.admin.tick.interval": "500ms",
        "distributed.scheduler.work-stealing": False,
        "distributed.admin.system-monitor.interval": "5s",
        # Dask's default also sets MALLOC_TRIM_THRESHOLD_, which stops glibc from keeping freed volumes for the
        # next case: every large array then costs fresh pages (measured: up to 1.5x the time per case).
        "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                                                "OPENBLAS_NUM_THREADS": 1},
    }
    if not log.isEnabledFor(logging.DEBUG):
        # The scheduler runs in this process: its start and stop messages are not the batch's output.
        for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core",
                     "distributed.http.proxy", "distributed.worker"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    with dask.config.set(settings):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host=LOCAL_HOST,
                               dashboard_address=f"{LOCAL_HOST}:0", memory_limit=memory, silence_logs=logging.CRITICAL,
                               protocol="tcp://")
        client = Client(cluster, set_as_default=False)
    handle = ClusterHandle(client, cluster, f"{workers} local worker process{'es' if workers > 1 else ''} "
                                            f"(1 thread, {format_bytes(memory)} each, on {LOCAL_HOST})")
    _warm_up(handle, warm_up)
    return handle


def start_in_background(workers: int | None, scheduler: str | None, memory_per_worker: str | None = None,
                        warm_up: tuple[str, ...] = ()) -> BackgroundStart:
    """:func:`start` on a thread of its own, so that the workers start and import the pipeline while this process
    scans the input (both take seconds; on an archive of DICOM series the scan takes longest). Unusable options are
    refused here, at once."""
    check_start(workers, scheduler, memory_per_worker)
    return BackgroundStart(workers, scheduler, memory_per_worker, warm_up)


class BackgroundStart:
    """A cluster being started by :func:`start` on another thread: :meth:`handle` waits for it (and raises what
    the start raised); :meth:`close` waits for it and closes it."""

    def __init__(self, workers, scheduler, memory_per_worker, warm_up):
        from concurrent.futures import ThreadPoolExecutor

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster-start")
        self._future = self._executor.submit(start, workers, scheduler, memory_per_worker, warm_up)
        self._executor.shutdown(wait=False)

    def handle(self) -> ClusterHandle:
        return self._future.result()

    def close(self) -> None:
        try:
            handle = self._future.result()
        except Exception:  # the start failed: nothing to close (the caller reports the error from handle())
            return
        handle.close()


def import_modules(names: tuple[str, ...]) -> int:
    """Import ``names`` in this (worker) process; returns the process id. Run on every worker before its first
    case, so that the case's time is the case's own and the imports overlap the client's scan of the input."""
    import importlib

    for name in names:
        importlib.import_module(name)
    return os.getpid()


def _warm_up(handle: ClusterHandle, modules: tuple[str, ...]) -> None:
    if not modules:
        return
    try:
        handle.client.run(import_modules, modules)
    except Exception as error:  # a worker without the package: its first case reports that, with the case's name
        log.debug("warming up the workers: %s", error)


def run_cases(handle: ClusterHandle, work: list, task, options, on_outcome, on_failure, on_progress=None) -> None:
    """Run ``task(case, options)`` for every ``(index, case)`` of ``work`` on the cluster.

    ``on_outcome(index, case, outcome)`` receives each task's return value; ``on_failure(index, case, reason,
    error)`` a case lost with its worker twice (or whose task could not run at all); ``on_progress(running)`` is
    called at least every :data:`PROGRESS_INTERVAL_S`.
    """
    from concurrent.futures import CancelledError

    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    queue = collections.deque((index, case, 0) for index, case in work)
    in_flight: dict = {}
    run_id = uuid.uuid4().hex[:8]
    ended = threading.Event()
    while queue or in_flight:
        capacity = max(1, handle.threads())
        while queue and len(in_flight) < capacity:
            index, case, attempt = queue.popleft()
            key = f"vertebral-fracture-case-{run_id}-{index}-{attempt}"
            future = handle.client.submit(task, case, options, key=key, pure=False, retries=0)
            future.add_done_callback(lambda _: ended.set())
            in_flight[future] = (index, case, attempt)
        if on_progress is not None:
            on_progress(len(in_flight))
        for future in _first_done(list(in_flight), ended):
            index, case, attempt = in_flight.pop(future)
            try:
                outcome = future.result()
            except KilledWorker as error:
                if attempt < RETRIES_AFTER_WORKER_DEATH:
                    log.warning("%s: its worker died; handing it out again", case.name)
                    queue.appendleft((index, case, attempt + 1))
                    continue
                on_failure(index, case, WORKER_DIED, error)
                continue
            except (FutureCancelledError, CancelledError) as error:
                raise SchedulerLost(f"the Dask scheduler dropped the batch's tasks ({error}); rerun with --resume") \
                    from None
            except Exception as error:  # the task could not run (unpicklable options, missing package on a worker)
                on_failure(index, case, None, error)
                continue
            finally:
                future.release()
            on_outcome(index, case, outcome)


def _first_done(futures: list, ended: threading.Event) -> list:
    """The futures done now, in their order, waiting until one is (at most :data:`PROGRESS_INTERVAL_S`): the next
    case goes out as soon as one ends. ``ended`` is set by every future's end."""
    if not any(future.done() for future in futures):
        ended.wait(PROGRESS_INTERVAL_S)
    ended.clear()
    return [future for future in futures if future.done()]


class SchedulerLost(InputError):
    def __init__(self, message: str):
        super().__init__(None, message)


def worker_environment() -> dict:
    """What a worker reports about itself (for the progress header and the throughput figures)."""
    return {"pid": os.getpid(), "time": time.time()}
