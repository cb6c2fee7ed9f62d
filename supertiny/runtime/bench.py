"""Measure an artifact on this machine, and judge it against a target's budgets.

What is measured, per artifact, each in a fresh child process (so peak memory is the
artifact's own and artifacts do not warm each other's caches):

* load time and file size;
* per prompt length: time to first token (TTFT), prompt tokens/s and decode tokens/s,
  over ``repeats`` runs after ``warmup`` runs, reported as median with min/max;
  prompts are real text (the bundled corpus), the prefix cache is reset each run, and
  eos is ignored so every run decodes the same number of tokens;
* per concurrency level: ``c`` clients each sending requests back to back through the
  same :class:`~.scheduler.Scheduler` the server uses; request latency p50/p95/p99
  (queueing included, as a client sees it), TTFT and throughput;
* peak resident memory of the process (what the device must hold), and the baseline
  before the model was loaded.

Budgets come from a :mod:`supertiny.targets` profile; :func:`verdicts` compares the
figures that match each budget (median TTFT and decode speed at the budget's prompt
length, p95 latency at its concurrency, peak RSS, file size).

Example::

    report = bench(["student-q4.gguf"], BenchConfig(prompt_lengths=(32, 256), concurrency=(1, 2)))
    print(format_result(report["results"][0]))  # from .bench_report
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import InvalidInputError, SupertinyError, UserError

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure.

    Args:
        prompt_lengths: prompt sizes (tokens) for TTFT and decode speed.
        new_tokens: tokens decoded per run.
        repeats: measured runs per prompt length (after ``warmup`` unmeasured ones).
        concurrency: numbers of simultaneous clients for the latency test.
        requests: requests per concurrency level (at least one per client).
        request_prompt_tokens / request_max_tokens: the shape of each latency request.
        slots: engines serving the requests in parallel (the server's ``--slots``).
        parallel: one engine decoding this many sequences together (0: off): GGUF with
            continuous batching (the server's ``--parallel``; single-stream figures then come
            from the batched engine too), ONNX optimum exports in static batches.
        threads, n_ctx, backend, gpu_layers, provider: how the engine is opened.
    """

    prompt_lengths: tuple[int, ...] = (32, 256, 1024)
    new_tokens: int = 64
    repeats: int = 3
    warmup: int = 1
    concurrency: tuple[int, ...] = (1, 2, 4)
    requests: int = 8
    request_prompt_tokens: int = 128
    request_max_tokens: int = 32
    slots: int = 1
    parallel: int = 0
    threads: int | None = None
    n_ctx: int | None = None
    backend: str = "auto"
    gpu_layers: int = 0
    provider: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("prompt_lengths", "concurrency"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise InvalidInputError(f"{name.replace('_', '-')} must be whole numbers >= 1, got {values}")
        for name in ("new_tokens", "repeats", "requests", "request_prompt_tokens", "request_max_tokens", "slots"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.new_tokens < 2:
            raise InvalidInputError("new-tokens must be >= 2 (decode speed is measured between tokens)")
        if self.parallel < 0 or (self.parallel and self.slots > 1):
            raise InvalidInputError(f"parallel must be >= 0 and not combined with slots > 1, got "
                                    f"parallel={self.parallel}, slots={self.slots}")
        if self.warmup < 0:
            raise InvalidInputError(f"warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"threads must be >= 1, got {self.threads}")

    def for_target(self, target: Any) -> BenchConfig:
        """This config plus what the target's budgets need measured and its runtime settings
        (the prompt length of its TTFT budget, its concurrency, its threads)."""
        b, rt = target.budget, target.runtime
        return replace(
            self,
            prompt_lengths=tuple(sorted({*self.prompt_lengths, b.prompt_tokens})),
            concurrency=tuple(sorted({*self.concurrency, b.concurrency})),
            request_prompt_tokens=b.prompt_tokens,
            request_max_tokens=b.max_tokens,
            threads=self.threads or rt.threads,
            gpu_layers=self.gpu_layers or rt.gpu_layers,
            provider=self.provider if self.provider != "cpu" else rt.provider,
        )


# -- the maths (pure; tested on synthetic timings) ---------------------------------------


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


def measured_for_budgets(result: dict[str, Any], target: Any) -> dict[str, float]:
    """The figures a target's budgets are checked against, from one artifact's result."""
    b = target.budget
    out: dict[str, float] = {"peak_rss_mb": result["peak_rss_mb"], "file_size_mb": result["file_size_mb"]}
    row = next((r for r in result["prompts"] if r["prompt_tokens"] == b.prompt_tokens), None)
    if row is not None:
        out["ttft_ms"] = row["ttft_ms_p50"]
        out["decode_tokens_per_s"] = row["decode_tokens_per_s_p50"]
    level = next((r for r in result["concurrency"] if r["concurrency"] == b.concurrency
                  and r["request_prompt_tokens"] == b.prompt_tokens and r["request_max_tokens"] == b.max_tokens), None)
    if level is not None:
        out["p95_latency_ms"] = level["latency_ms_p95"]
    return out


def verdicts(result: dict[str, Any], target: Any) -> list[dict[str, Any]]:
    """Pass/fail for each budget of ``target`` (``passed`` None: not measured)."""
    from ..targets import check

    return [v.to_dict() for v in check(target, measured_for_budgets(result, target))]


# -- measuring one artifact (runs in the child process) ----------------------------------


def peak_rss_bytes() -> int:
    """Peak resident set of this process (Linux/macOS via getrusage, Windows via psutil)."""
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        return int(psutil.Process().memory_info().peak_wset)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _corpus_ids(engine: Any, need: int) -> list[int]:
    from ..evaluate import default_corpus_path, read_text

    text = read_text(default_corpus_path())
    ids = list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    while len(ids) < need:  # long prompts on a short corpus: repeat it (speed does not care)
        ids += ids
    return ids


def _timed_run(engine: Any, prompt: list[int], new_tokens: int) -> list[float]:
    """Seconds from the start of the call to each generated token."""
    engine.reset()
    start = time.perf_counter()
    times = [time.perf_counter() - start for _ in engine.stream(prompt, new_tokens, stop_ids=[])]
    if len(times) < new_tokens:
        raise SupertinyError(f"the engine stopped after {len(times)} of {new_tokens} tokens")
    return times


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


def _concurrency_level(engines: list[Any], corpus: list[int], clients: int, config: BenchConfig,
                       offset: int) -> dict[str, Any]:
    from .batch_scheduler import BatchScheduler
    from .onnx_batch import StaticBatchScheduler
    from .onnxrt import OnnxEngine
    from .scheduler import Scheduler

    n = max(config.requests, clients)
    if not config.parallel:
        scheduler = Scheduler(engines, max_queue=n, request_timeout_s=3600)
    elif isinstance(engines[0], OnnxEngine):
        scheduler = StaticBatchScheduler(engines[0], batch=config.parallel, max_queue=n, request_timeout_s=3600)
    else:
        scheduler = BatchScheduler(engines[0], max_queue=n, request_timeout_s=3600)

    def send(i: int) -> Iterator[int]:
        start = (offset + i * 97) % max(1, len(corpus) - config.request_prompt_tokens)
        prompt = corpus[start:start + config.request_prompt_tokens]
        for chunk in scheduler.submit(prompt, config.request_max_tokens, ignore_eos=True):
            yield len(chunk.token_ids)

    run = closed_loop(clients, n, send)
    scheduler.close()
    if run.errors:
        e = run.errors[0]
        raise SupertinyError(f"{len(run.errors)} of {n} requests failed at concurrency {clients}: "
                             f"{type(e).__name__}: {e}")
    return {
        "concurrency": clients, "requests": n, "slots": len(engines), "parallel": config.parallel,
        "request_prompt_tokens": config.request_prompt_tokens, "request_max_tokens": config.request_max_tokens,
        **{k: v * 1000 for k, v in summarize(run.latencies, "latency_ms", (50, 95, 99)).items()},
        **{k: v * 1000 for k, v in summarize(run.ttfts, "ttft_ms", (50, 95)).items()},
        "throughput_tokens_per_s": run.tokens / run.wall_s, "requests_per_s": n / run.wall_s,
        "wall_s": run.wall_s,
    }


def bench_artifact(artifact: str, config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Measure one artifact in this process (:func:`bench` runs it in a child)."""
    from ..models import resolve
    from .engine import open_engine

    kind, path = resolve(artifact)
    report = progress or (lambda what, done, total: None)
    baseline = peak_rss_bytes()
    cores = os.cpu_count() or 1
    threads = config.threads or cores
    notes = []
    if threads > cores:
        notes.append(f"asked for {threads} threads; this machine has {cores} cores, so {cores} were used")
        threads = cores
    longest = max(*config.prompt_lengths, config.request_prompt_tokens)
    n_ctx = config.n_ctx or (longest + max(config.new_tokens, config.request_max_tokens) + 16 if kind == "gguf"
                             else None)
    steps = 1 + len(config.prompt_lengths) * (config.warmup + config.repeats) + len(config.concurrency)
    done = 0
    report("loading", done, steps)
    t0 = time.perf_counter()
    options = {"threads": threads, "n_ctx": n_ctx, "gpu_layers": config.gpu_layers, "provider": config.provider}
    if config.parallel:  # one engine decoding `parallel` sequences per forward pass
        if (kind, config.backend) not in {("gguf", "auto"), ("gguf", "llama.cpp"), ("onnx", "auto"),
                                          ("onnx", "onnxruntime")}:
            raise InvalidInputError(f"--parallel batches GGUF files on the llama.cpp backend (continuously) and "
                                    f"ONNX exports (static batches); {path} is neither")
        from .batched import BatchedLlamaEngine
        from .engine import EngineOptions

        if kind == "gguf":
            engines = [BatchedLlamaEngine.open(path, EngineOptions(**options), parallel=config.parallel)]
        else:
            from .onnx_batch import check_batchable

            engines = [open_engine(artifact, "onnxruntime", **options)]
            check_batchable(engines[0])
    else:
        engines = [open_engine(artifact, config.backend, **options) for _ in range(config.slots)]
    engine = engines[0]
    corpus = _corpus_ids(engine, longest + 1)
    if config.gpu_layers and not getattr(engine, "gpu_offload", True):
        notes.append(f"gpu_layers={config.gpu_layers} asked, but this llama.cpp build has no GPU backend: "
                     "ran on the CPU")
    load_s = time.perf_counter() - t0
    done += 1
    if longest + config.new_tokens > engine.n_ctx:
        raise InvalidInputError(f"prompts of {longest} tokens + {config.new_tokens} new ones exceed the "
                                f"model's context of {engine.n_ctx}")
    prompts = []
    for length in config.prompt_lengths:
        runs = []
        for i in range(config.warmup + config.repeats):
            report(f"prompt {length}, run {i + 1}/{config.warmup + config.repeats}", done, steps)
            times = _timed_run(engine, corpus[:length], config.new_tokens)
            done += 1
            if i >= config.warmup:
                runs.append(times)
        ttft = [t[0] * 1000 for t in runs]
        prompts.append({
            "prompt_tokens": length, "new_tokens": config.new_tokens, "runs": len(runs),
            **summarize(ttft, "ttft_ms"),
            **summarize([length / (t[0]) for t in runs], "prompt_tokens_per_s"),
            **summarize([decode_rate(t) for t in runs], "decode_tokens_per_s"),
        })
    levels = []
    for c in config.concurrency:
        report(f"{c} concurrent clients", done, steps)
        for e in engines:  # no prefix cached from the runs before: every request prefills in full
            e.reset()
        levels.append(_concurrency_level(engines, corpus, c, config, offset=(len(levels) + 1) * 1009))
        done += 1
    report("done", done, steps)
    result = {
        "artifact": str(path), "format": kind, "backend": engine.backend_label, "threads": threads,
        "n_ctx": engine.n_ctx, "slots": config.slots, "parallel": config.parallel,
        "file_size_mb": engine.info["file_bytes"] / 2**20,
        "load_s": load_s, "baseline_rss_mb": baseline / 2**20, "peak_rss_mb": peak_rss_bytes() / 2**20,
        "prompts": prompts, "concurrency": levels, "notes": notes,
        "machine": {"cores": cores, "platform": sys.platform},
    }
    for e in engines:
        e.close()
    return result


# -- several artifacts, each in its own process -------------------------------------------


def _child(artifact: str, config: BenchConfig, out: Any) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from .process import keep_torch_out

        keep_torch_out(artifact, config.backend)  # peak RSS as a deployment sees it
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        result = bench_artifact(artifact, config, lambda what, done, total: out.put(("progress", what, done, total)))
        out.put(("result", result))
    except UserError as exc:
        out.put(("user-error", type(exc).__name__, str(exc)))
    except BaseException as exc:  # the parent reports it; a child must not die silently
        out.put(("error", type(exc).__name__, f"{exc}"))


def bench(artifacts: Sequence[str], config: BenchConfig, target: Any = None,
          progress: Callable[[str, str, int, int], None] | None = None, isolate: bool = True) -> dict[str, Any]:
    """Measure each artifact (in a child process unless ``isolate`` is False) and judge
    it against ``target``'s budgets.

    Returns ``{"config": ..., "target": ..., "results": [one dict per artifact with
    "verdicts" and "passed"], "passed": all passed}``.
    """
    import multiprocessing as mp

    from ..models import resolve

    if not artifacts:
        raise InvalidInputError("no artifact to benchmark")
    for a in artifacts:
        resolve(a)  # every path checked before minutes of measuring
    if target is not None:
        config = config.for_target(target)
    results = []
    for artifact in artifacts:
        def tell(what: str, done: int, total: int, artifact: str = artifact) -> None:
            if progress:
                progress(artifact, what, done, total)

        if not isolate:
            result = bench_artifact(artifact, config, tell)
        else:
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            child = ctx.Process(target=_child, args=(artifact, config, out), daemon=True)
            child.start()
            result = _collect(child, out, tell)
        if target is not None:
            result["verdicts"] = verdicts(result, target)
            result["passed"] = all(v["passed"] is not False for v in result["verdicts"])
        results.append(result)
    return {"config": asdict(config), "target": target.to_dict() if target is not None else None,
            "results": results,
            "passed": all(r.get("passed", True) for r in results)}


def _collect(child: Any, out: Any, tell: Callable[[str, int, int], None]) -> dict[str, Any]:
    while True:
        try:
            msg = out.get(timeout=1.0)
        except queue.Empty:
            if not child.is_alive():
                raise SupertinyError(f"the benchmark process died (exit code {child.exitcode})") from None
            continue
        if msg[0] == "progress":
            tell(*msg[1:])
        elif msg[0] == "result":
            child.join()
            return msg[1]
        else:
            child.join()
            kind, name, text = msg
            if kind == "user-error":
                raise InvalidInputError(text)
            raise SupertinyError(f"benchmark failed: {name}: {text}")
