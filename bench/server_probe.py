"""What the service benchmarks read off a running server process: CPU seconds (the whole
process, its event-loop thread), whether it has gone idle, and its batch histograms
(``/metrics``) turned into a per-batcher profile."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_seconds(pid: int, stat: str | None = None) -> float:
    """User + system CPU seconds of a process (Linux /proc; ``stat``: another stat file)."""
    fields = Path(stat or f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loop_thread_seconds(pid: int) -> float:
    """CPU seconds of a process's main thread (the server's event loop: its thread id is
    the process id); the workers and gRPC's own threads are the rest."""
    return cpu_seconds(pid, f"/proc/{pid}/task/{pid}/stat")


def wait_until_idle(pid: int, limit_s: float, quiet_s: float = 0.5,
                    busy: float = 0.10) -> float | None:
    """Wait until the process uses under ``busy`` of a core for ``quiet_s`` (a server that
    has worked off its queues); the seconds waited, or None after ``limit_s``."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(quiet_s)
        if (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) < busy:
            return round(time.monotonic() - start, 2)
    return None


def scrape(info: dict) -> dict[tuple[str, str], dict]:
    """The server's batch histograms (``/metrics``): per (histogram, batcher), the count,
    the sum and the cumulative bucket counts."""
    import urllib.request

    url = f"http://127.0.0.1:{info['http_port']}/metrics"
    return batch_histograms(urllib.request.urlopen(url, timeout=10).read().decode())


def batch_histograms(text: str) -> dict[tuple[str, str], dict]:
    """``scrape``'s parsing of a Prometheus text page."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], dict] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in BATCH_HISTOGRAMS:
            continue
        for sample in family.samples:
            h = out.setdefault((family.name, sample.labels["encoder"]),
                               {"count": 0.0, "sum": 0.0, "buckets": {}})
            if sample.name.endswith("_bucket"):
                h["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_count"):
                h["count"] = sample.value
            elif sample.name.endswith("_sum"):
                h["sum"] = sample.value
    return out


BATCH_HISTOGRAMS = {"vrkn_encoder_batch_size": "size", "vrkn_batch_wait_seconds": "wait_ms",
                    "vrkn_encoder_seconds": "compute_ms", "vrkn_batch_return_seconds":
                    "return_ms"}


def batch_profile(before: dict, after: dict) -> list[dict]:
    """Per batcher over the fleet phase: batches, their mean size, and the mean and p90
    (the upper edge of the bucket that holds it) of the wait before compute, the compute,
    and the return to the loop, in ms."""
    rows: dict[str, dict] = {}
    for (name, batcher), h in after.items():
        b = before.get((name, batcher), {"count": 0.0, "sum": 0.0, "buckets": {}})
        n = h["count"] - b["count"]
        if n <= 0:
            continue
        key, scale = BATCH_HISTOGRAMS[name], (1 if name.endswith("size") else 1e3)
        row = rows.setdefault(batcher, {"batcher": batcher, "batches": int(n)})
        row[f"{key}_mean"] = round((h["sum"] - b["sum"]) / n * scale, 3)
        cum = sorted((le, v - b["buckets"].get(le, 0.0)) for le, v in h["buckets"].items())
        row[f"{key}_p90_le"] = next((le * scale for le, v in cum if v >= 0.9 * n), None)
    return sorted(rows.values(), key=lambda r: r["batcher"])
