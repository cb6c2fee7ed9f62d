"""The figures every load test uses: percentiles, run summaries, decode rate, peak memory,
and :func:`closed_loop`, clients sending requests back to back.

Pure functions (tested on synthetic timings) apart from :func:`closed_loop`'s threads;
split from :mod:`.measure`, which re-exports them, so that the benchmarks and the server
load test share them without the device benchmark's orchestration.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks
    (numpy's default), so p50 of an even count is the mean of the middle two.

    >>> percentile([1, 2, 3, 4], 50), percentile([10, 20], 95), percentile([5], 99)
    (2.5, 19.5, 5.0)
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in 0..100, got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def summarize(values: Sequence[float], name: str, quantiles: Sequence[int] = (50,)) -> dict[str, float]:
    """``{name}_p50``, ... plus ``{name}_min``/``_max`` (the spread of the runs).

    >>> summarize([3.0, 1.0, 2.0], "ttft_ms")
    {'ttft_ms_p50': 2.0, 'ttft_ms_min': 1.0, 'ttft_ms_max': 3.0}
    """
    out = {f"{name}_p{q}": percentile(values, q) for q in quantiles}
    out[f"{name}_min"], out[f"{name}_max"] = float(min(values)), float(max(values))
    return out


def decode_rate(token_times: Sequence[float]) -> float:
    """Tokens per second between the first and the last token (the first token's time
    is the prefill's, so it is not counted).

    >>> round(decode_rate([1.0, 1.25, 1.5, 1.75, 2.0]), 6)
    4.0
    """
    if len(token_times) < 2:
        raise ValueError("decode rate needs at least two token times")
    span = token_times[-1] - token_times[0]
    return (len(token_times) - 1) / span if span > 0 else math.inf


def peak_rss_bytes() -> int:
    """Peak resident set of this process (Linux/macOS via getrusage, Windows via psutil)."""
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        return int(psutil.Process().memory_info().peak_wset)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass
class LoadRun:
    """What :func:`closed_loop` saw: per-request seconds, tokens and failures."""

    latencies: list[float]
    ttfts: list[float]
    tokens: int
    errors: list[BaseException]
    wall_s: float


def closed_loop(clients: int, requests: int, send: Callable[[int], Iterator[int]]) -> LoadRun:
    """``clients`` threads send requests ``0..requests-1`` back to back (a closed loop:
    each client waits for its reply before sending the next), as users of a server do.

    ``send(i)`` performs request ``i`` and yields the number of tokens in each piece of
    the reply as it arrives; latency and time to first token are taken around it.
    A request that raises is recorded in ``errors`` and the client goes on.
    """
    todo: queue.Queue[int] = queue.Queue()
    for i in range(requests):
        todo.put(i)
    run = LoadRun([], [], 0, [], 0.0)
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            t0, first, count = time.perf_counter(), None, 0
            try:
                for n in send(i):
                    if n and first is None:
                        first = time.perf_counter() - t0
                    count += n
            except Exception as exc:  # reported by the caller, never swallowed
                with lock:
                    run.errors.append(exc)
                continue
            with lock:
                run.latencies.append(time.perf_counter() - t0)
                run.ttfts.append(first if first is not None else run.latencies[-1])
                run.tokens += count

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.wall_s = time.perf_counter() - start
    return run
