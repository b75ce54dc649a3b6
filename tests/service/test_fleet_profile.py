"""The fleet benchmark's batch profile (bench/server_probe.py ``batch_profile``) against
hand-computed means of what a server's metrics recorded: only the batches between the two
scrapes count. Tolerance: 1e-9 (the means are rounded to 3 decimals of a ms by the bench;
the inputs here are chosen to be exact at that rounding)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from server.batcher import BatchTimes
from server.metrics import Metrics

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def probe():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("server_probe")
    finally:
        sys.path.remove(str(BENCH))


def test_the_profile_counts_only_the_batches_between_the_scrapes(probe):
    metrics = Metrics()
    filt, image = metrics.batch_observer("m/filter"), metrics.batch_observer("m/image")
    filt(BatchTimes(size=100, waited=1.0, compute=1.0, returned=1.0))  # before: left out
    before = probe.batch_histograms(metrics.render().decode())
    filt(BatchTimes(size=2, waited=0.002, compute=0.001, returned=0.0))
    filt(BatchTimes(size=4, waited=0.004, compute=0.003, returned=0.001))
    image(BatchTimes(size=8, waited=0.010, compute=0.005, returned=0.002))
    rows = probe.batch_profile(before, probe.batch_histograms(metrics.render().decode()))
    by = {r["batcher"]: r for r in rows}
    assert set(by) == {"m/filter", "m/image"}
    f, i = by["m/filter"], by["m/image"]
    assert f["batches"] == 2 and i["batches"] == 1
    for got, want in [(f["size_mean"], 3.0), (f["wait_ms_mean"], 3.0),
                      (f["compute_ms_mean"], 2.0), (f["return_ms_mean"], 0.5),
                      (i["size_mean"], 8.0), (i["wait_ms_mean"], 10.0),
                      (i["compute_ms_mean"], 5.0), (i["return_ms_mean"], 2.0)]:
        assert got == pytest.approx(want, abs=1e-9)
    # p90 as the upper edge of the bucket holding it: sizes 2 and 4 -> the bucket "4"
    assert f["size_p90_le"] == 4.0 and f["wait_ms_p90_le"] == pytest.approx(5.0)


def test_no_batches_between_the_scrapes_no_rows(probe):
    metrics = Metrics()
    metrics.batch_observer("m/filter")(BatchTimes(1, 0.0, 0.0, 0.0))
    text = metrics.render().decode()
    assert probe.batch_profile(probe.batch_histograms(text), probe.batch_histograms(text)) == []
