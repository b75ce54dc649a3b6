"""The batcher's inline path (server/batcher.py): a cheap batch runs on the event loop, an
expensive one or one beyond the loop's share goes to the worker thread, and work submitted
while a batch finishes waits for its end. Exact comparisons (no tolerance: the same
function computes both ways)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from server.batcher import Batcher, BatchTimes


def _batcher(executor, compute, finish=None, **kw) -> Batcher:
    return Batcher("test", executor, list, compute,
                   finish or (lambda work, out: out), **kw)


def _squares(work: list[int]) -> list[tuple[int, str]]:
    return [(x * x, threading.current_thread().name) for x in work]


def _run(coro):
    return asyncio.run(coro)


def test_a_cheap_lone_batch_runs_on_the_loop_after_one_measured_in_the_worker():
    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as ex:
            b = _batcher(ex, _squares, inline_s=1.0)  # 1 s: anything is cheap
            b.start()
            first = await b.run(3)  # the mean is unknown: the worker measures it
            later = [await b.run(x) for x in range(4)]
            await b.stop()
            return first, later, b.inline_batches, b.batches

    first, later, inline, batches = _run(main())
    assert first == (9, first[1]) and first[1].startswith("worker")
    assert [v for v, _ in later] == [0, 1, 4, 9]
    assert all(name == threading.main_thread().name for _, name in later)
    assert (inline, batches) == (4, 5)


@pytest.mark.parametrize("kw", [dict(inline_s=0.0), dict(inline_s=1.0, inline_share=0.0),
                                dict(inline_s=1e-6)])
def test_no_budget_no_share_or_a_costly_batch_stays_in_the_worker(kw):
    def slow(work):
        time.sleep(0.002)  # 2 ms: above 1e-6 s
        return _squares(work)

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as ex:
            b = _batcher(ex, slow, **kw)
            b.start()
            out = [await b.run(x) for x in range(5)]
            await b.stop()
            return out, b.inline_batches

    out, inline = _run(main())
    assert inline == 0
    assert [v for v, _ in out] == [0, 1, 4, 9, 16]
    assert all(name.startswith("worker") for _, name in out)


def test_inline_time_beyond_the_share_sends_batches_back_to_the_worker():
    def busy(work):  # 5 ms of loop time per batch: 25% of a second after 50 batches
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        return _squares(work)

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as ex:
            b = _batcher(ex, busy, inline_s=1.0, inline_share=0.1)
            b.start()
            out = [await b.run(x) for x in range(60)]
            await b.stop()
            return out, b.inline_batches

    out, inline = _run(main())
    # 0.1 s of the last second at most: about 20-25 of the 5-ms batches ran inline (the
    # share decays while the worker runs), not 59
    assert 10 <= inline <= 35, inline
    assert sum(name.startswith("worker") for _, name in out) == 60 - inline


def test_work_submitted_while_a_batch_finishes_runs_after_it():
    order: list[str] = []

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b: Batcher

            def finish(work, out):
                order.append(f"finish {work}")
                if work == [1]:  # e.g. a settle job queued by a recorded message
                    b.submit(2).add_done_callback(lambda f: order.append("second done"))
                order.append(f"finish {work} ends")
                return out

            b = _batcher(ex, _squares, finish, inline_s=1.0)
            b.start()
            await b.run(0)  # measured in the worker; then inline
            await b.run(1)
            await asyncio.sleep(0.01)
            await b.stop()

    _run(main())
    assert order[:5] == ["finish [0]", "finish [0] ends", "finish [1]", "finish [1] ends",
                         "finish [2]"]


def test_a_failing_inline_batch_fails_its_callers_and_the_batcher_goes_on():
    calls = []

    def flaky(work):
        calls.append(work)
        if work == [7]:
            raise RuntimeError("boom")
        return _squares(work)

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = _batcher(ex, flaky, inline_s=1.0)
            b.start()
            await b.run(1)
            with pytest.raises(Exception, match="boom"):
                await b.run(7)
            after = await b.run(3)
            await b.stop()
            return after, b.inline_batches

    after, inline = _run(main())
    assert after[0] == 9 and inline == 1 and calls == [[1], [7], [3]]


def test_several_at_once_batch_in_the_worker_though_each_would_be_cheap():
    """Items queued in one loop iteration form one batch; a batch of several (and the one
    after it) goes to the worker, so batches keep forming under load."""
    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as ex:
            b = _batcher(ex, _squares, inline_s=1.0, inline_share=1.0)
            b.start()
            await b.run(0)
            await b.run(1)  # one at a time: inline
            inline_before = b.inline_batches
            out = await asyncio.gather(*(b.run(x) for x in range(8)))
            await b.stop()
            return out, inline_before, b.inline_batches, b.batches

    out, before, after, batches = _run(main())
    assert before == 1 and after == 1 and batches == 3  # 0 (worker), 1 (inline), 0..7
    assert [v for v, _ in out] == [x * x for x in range(8)]
    assert all(name.startswith("worker") for _, name in out)


def test_each_batch_reports_where_its_time_went():
    """``observe`` gets a BatchTimes per batch: an item queued behind a 30 ms batch waited
    for it; compute is the compute's own time; a batch on the loop returns in 0 s."""
    seen: list[BatchTimes] = []

    def slow_first(work):
        if work == [0]:
            time.sleep(0.03)
        return _squares(work)

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as ex:
            b = _batcher(ex, slow_first, observe=seen.append, inline_s=1.0)
            b.start()
            first = b.submit(0)
            await asyncio.sleep(0.005)  # the first batch is in the worker now
            second = b.submit(1)  # queued behind it; one after one, measured cheap: inline
            await asyncio.gather(first, second)
            await b.run(2)  # inline
            await b.stop()
            return b.inline_batches

    inline = _run(main())
    assert [t.size for t in seen] == [1, 1, 1] and inline == 2
    assert 0.03 <= seen[0].compute < 0.5 and seen[0].waited < seen[0].compute
    assert seen[1].waited >= 0.02  # the 30 ms batch, less the 5 ms before it was queued
    assert seen[0].returned >= 0 and seen[1].returned == seen[2].returned == 0.0
    assert all(t.waited >= 0 and t.compute >= 0 for t in seen)
