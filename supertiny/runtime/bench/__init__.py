"""Benchmarks: measuring artifacts on this machine and judging them against a target.

* :mod:`.measure` — load time, TTFT, prompt and decode speed, latency under concurrency
  (through the server's schedulers) and peak memory, each artifact in its own process;
  verdicts against a :mod:`supertiny.targets` profile's budgets.
* :mod:`.loadtest` — percentiles, summaries, decode rate, peak RSS and the closed-loop
  clients every load test shares.
* :mod:`.report` — the results as text tables and a plot.

The top of the runtime: imports :mod:`supertiny.runtime.serving`,
:mod:`supertiny.runtime.engines` and the layers below ``runtime``.
"""
