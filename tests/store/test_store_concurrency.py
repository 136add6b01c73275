"""Many writers, readers and a killed writer against one store file (real processes, real files)."""

import json
import multiprocessing
import os
import random
import signal
import threading
import time

import pytest

from scripts.store_bench import run, write_gateways
from store import Store
from store.atomic import temp_prefix
from store.models import Gateway


def test_eight_writer_processes_lose_nothing_and_readers_never_see_a_partial_file(db_path):
    result = run(db_path, processes=8, writes_per_process=250, readers=1)
    assert result.records == 2000
    assert len({g.subdomain for g in Store(db_path).list("gateways")}) == 2000
    assert result.reads > 0 and result.read_failures == 0, result.first_read_failure
    print(f"\nstore: {result.writes_per_second:.0f} writes/s with 8 writer processes (+1 reader)")


def test_threads_sharing_one_store(store):
    def write(worker):
        for index in range(40):
            store.create("gateways", Gateway(name="t", subdomain=f"t{worker}-{index}"))

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.list("gateways")) == 240


def _seed(store, count):
    with store.transaction():
        for index in range(count):
            store.create("gateways", Gateway(name="seed", subdomain=f"seed-{index}"))


def _orphans(path):
    directory = os.path.dirname(path)
    return [name for name in os.listdir(directory) if name.startswith(temp_prefix(path))]


def _hang_inside_write(path, marker):
    """Child: write once, but stop for good after the temp file is written and before it replaces the store."""
    import store.atomic

    real_fsync = os.fsync

    def fsync_then_hang(fd):
        real_fsync(fd)
        with open(marker, "w"):
            pass
        time.sleep(600)

    store.atomic.os.fsync = fsync_then_hang
    Store(path).create("gateways", Gateway(name="doomed", subdomain="doomed"))


def test_writer_killed_mid_write_leaves_the_previous_file(store, db_path, tmp_path):
    _seed(store, 50)
    before = open(db_path, "rb").read()
    marker = str(tmp_path / "in-write")
    child = multiprocessing.get_context("spawn").Process(target=_hang_inside_write, args=(db_path, marker))
    child.start()
    deadline = time.monotonic() + 30
    while not os.path.exists(marker):
        assert time.monotonic() < deadline and child.is_alive(), "child never reached the write"
        time.sleep(0.01)
    assert len(_orphans(db_path)) == 1  # the new content exists, only in the temp file
    os.kill(child.pid, signal.SIGKILL)
    child.join()

    assert open(db_path, "rb").read() == before
    reopened = Store(db_path)  # the dead writer's lock is released by the kernel; its temp file is swept
    assert _orphans(db_path) == []
    assert len(reopened.list("gateways")) == 50
    reopened.create("gateways", Gateway(name="after", subdomain="after"))
    assert len(reopened.list("gateways")) == 51


@pytest.mark.timeout(60)
def test_writer_killed_at_random_moments_always_leaves_a_valid_file(store, db_path):
    _seed(store, 2000)  # a larger file makes each write longer, so kills land inside writes more often
    ctx = multiprocessing.get_context("spawn")
    rng = random.Random(1234)
    for _ in range(4):
        started, finished = ctx.Event(), ctx.Queue()  # kept referenced until the child has unpickled them
        started.set()
        child = ctx.Process(target=write_gateways, args=(db_path, rng.randrange(10**9), 10**6, started, finished))
        child.start()
        count_before = len(json.load(open(db_path))["gateways"])
        deadline = time.monotonic() + 30
        while len(json.load(open(db_path))["gateways"]) == count_before:  # wait until it is writing
            assert time.monotonic() < deadline and child.is_alive()
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        with open(db_path, "rb") as handle:
            data = json.loads(handle.read())  # never truncated or half-written
        assert len(data["gateways"]) > count_before
    Store(db_path).create("gateways", Gateway(name="after", subdomain="after"))
    assert _orphans(db_path) == []
