"""Store write throughput under contention: ``python scripts/store_bench.py --processes 8 --writes 250``.

Every write in the store serialises on one file lock and rewrites the whole file, so throughput depends on the
disk and on the store's size; run this where the store will live. Reader processes parse the file in a loop
meanwhile and count any parse failure (there must be none: writes are atomic replacements).

The worker functions are module-level so ``multiprocessing`` (spawn) can import them in child processes; the
concurrency tests (tests/store/test_store_concurrency.py) use them too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from store.models import Gateway
from store.repo import Store


def write_gateways(path: str, worker: int, count: int, start: Any, done: Any) -> None:
    """Create ``count`` gateways (one transaction each) once ``start`` is released; report the finish time."""
    store = Store(path)
    start.wait()
    for index in range(count):
        label = f"w{worker}-{index}"
        store.create("gateways", Gateway(name=label, subdomain=label))
    done.put(time.perf_counter())


def read_until(path: str, stop: Any, results: Any) -> None:
    """Parse the store file in a loop until ``stop`` is set; report (reads, failures, first failure)."""
    reads = failures = 0
    first_failure = None
    while not stop.is_set():
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            continue
        reads += 1
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except ValueError as exc:
            failures += 1
            first_failure = first_failure or f"{exc} ({len(raw)} bytes)"
    results.put((reads, failures, first_failure))


@dataclass(frozen=True)
class BenchResult:
    processes: int
    writes: int
    records: int
    seconds: float
    reads: int
    read_failures: int
    first_read_failure: str | None

    @property
    def writes_per_second(self) -> float:
        return self.writes / self.seconds


def _collect(results: Any, procs: list[Any]) -> list[Any]:
    """One result per process; fail fast (instead of waiting forever) when one of them dies."""
    collected: list[Any] = []
    while len(collected) < len(procs):
        try:
            collected.append(results.get(timeout=0.5))
        except queue.Empty:
            if any(proc.exitcode not in (None, 0) for proc in procs):
                for proc in procs:
                    proc.kill()
                raise RuntimeError("a benchmark process failed; see its traceback above") from None
    return collected


def run(path: str, processes: int = 8, writes_per_process: int = 250, readers: int = 0) -> BenchResult:
    """Run the writers (and readers) against the store at ``path``; count what landed."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes + 1)
    done = ctx.Queue()
    stop = ctx.Event()
    read_results = ctx.Queue()
    Store(path)  # create the lock file before anyone races for it
    reader_procs = [ctx.Process(target=read_until, args=(path, stop, read_results)) for _ in range(readers)]
    writer_procs = [
        ctx.Process(target=write_gateways, args=(path, worker, writes_per_process, start, done))
        for worker in range(processes)
    ]
    for proc in reader_procs + writer_procs:
        proc.start()
    start.wait()
    began = time.perf_counter()
    try:
        finished = _collect(done, writer_procs)
    finally:
        stop.set()
    read_stats = _collect(read_results, reader_procs)
    for proc in writer_procs + reader_procs:
        proc.join()
    return BenchResult(
        processes=processes,
        writes=processes * writes_per_process,
        records=len(Store(path).list("gateways")),
        seconds=max(finished) - began,
        reads=sum(reads for reads, _, _ in read_stats),
        read_failures=sum(failures for _, failures, _ in read_stats),
        first_read_failure=next((first for _, _, first in read_stats if first), None),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--writes", type=int, default=250, help="writes per process")
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--dir", default=None, help="directory for the store file (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        result = run(os.path.join(directory, "bench.json"), args.processes, args.writes, args.readers)
    print(
        f"{result.processes} writer processes x {result.writes // result.processes} writes: "
        f"{result.records}/{result.writes} records in {result.seconds:.2f}s = {result.writes_per_second:.0f} writes/s; "
        f"{args.readers} readers parsed the file {result.reads} times, {result.read_failures} failures"
    )


if __name__ == "__main__":
    main()
