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

import os
import queue
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import InvalidInputError, SupertinyError, UserError
from .loadtest import LoadRun, closed_loop, decode_rate, peak_rss_bytes, percentile, summarize

__all__ = ["BenchConfig", "LoadRun", "bench", "bench_artifact", "closed_loop", "decode_rate", "measured_for_budgets",
           "peak_rss_bytes", "percentile", "summarize", "verdicts"]

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
            from the batched engine too), ONNX optimum exports in static batches. None
            (auto): GGUF files on llama.cpp batch the most concurrent clients measured
            (with one slot), everything else runs unbatched.
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
    parallel: int | None = None
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
        if self.parallel is not None and (self.parallel < 0 or (self.parallel and self.slots > 1)):
            raise InvalidInputError(f"parallel must be >= 0 and not combined with slots > 1, got "
                                    f"parallel={self.parallel}, slots={self.slots}")
        if self.warmup < 0:
            raise InvalidInputError(f"warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"threads must be >= 1, got {self.threads}")

    def parallel_for(self, kind: str) -> int:
        """The sequences one engine batches for an artifact of ``kind`` (0: unbatched)."""
        if self.parallel is not None:
            return self.parallel
        from .batched import batches

        one_engine = batches(kind, self.backend) and self.slots == 1
        return max(self.concurrency) if one_engine and max(self.concurrency) > 1 else 0

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


# -- budgets ------------------------------------------------------------------------------


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


def _concurrency_level(engines: list[Any], corpus: list[int], clients: int, config: BenchConfig,
                       offset: int, parallel: int) -> dict[str, Any]:
    from .batch_scheduler import BatchScheduler
    from .onnx_batch import StaticBatchScheduler
    from .onnxrt import OnnxEngine
    from .scheduler import Scheduler

    n = max(config.requests, clients)
    if not parallel:
        scheduler = Scheduler(engines, max_queue=n, request_timeout_s=3600)
    elif isinstance(engines[0], OnnxEngine):
        scheduler = StaticBatchScheduler(engines[0], batch=parallel, max_queue=n, request_timeout_s=3600)
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
        "concurrency": clients, "requests": n, "slots": len(engines), "parallel": parallel,
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
    parallel = config.parallel_for(kind)
    if parallel:  # one engine decoding `parallel` sequences per forward pass
        if (kind, config.backend) not in {("gguf", "auto"), ("gguf", "llama.cpp"), ("onnx", "auto"),
                                          ("onnx", "onnxruntime")}:
            raise InvalidInputError(f"--parallel batches GGUF files on the llama.cpp backend (continuously) and "
                                    f"ONNX exports (static batches); {path} is neither")
        from .batched import BatchedLlamaEngine
        from .engine import EngineOptions

        if kind == "gguf":
            engines = [BatchedLlamaEngine.open(path, EngineOptions(**options), parallel=parallel)]
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
        levels.append(_concurrency_level(engines, corpus, c, config, offset=(len(levels) + 1) * 1009,
                                         parallel=parallel))
        done += 1
    report("done", done, steps)
    result = {
        "artifact": str(path), "format": kind, "backend": engine.backend_label, "threads": threads,
        "n_ctx": engine.n_ctx, "slots": config.slots, "parallel": parallel,
        "file_size_mb": engine.info["file_bytes"] / 2**20,
        "load_s": load_s, "baseline_rss_mb": baseline / 2**20, "peak_rss_mb": peak_rss_bytes() / 2**20,
        "prompts": prompts, "concurrency": levels, "notes": notes,
        "machine": {"cores": cores, "platform": sys.platform},
    }
    if kind == "gguf" and "llama.cpp" in engine.backend_label:
        from .cpu_build import build_report, cpu_flags
        from .llamacpp import _llama_cpp

        build = build_report(_llama_cpp().llama_print_system_info().decode(errors="replace"), cpu_flags())
        result["llama_cpp_build"] = build
        if build["unused_by_build"]:
            notes.append(f"this llama.cpp build leaves {', '.join(build['unused_by_build'])} of this CPU unused; "
                         "`make llama` rebuilds it for this CPU")
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
