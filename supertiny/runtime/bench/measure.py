"""Measure an artifact on this machine, and judge it against a target's budgets.

What is measured, per artifact, each in a fresh child process (so peak memory is the
artifact's own and artifacts do not warm each other's caches):

* load time and file size;
* per prompt length: time to first token (TTFT), prompt tokens/s and decode tokens/s,
  over ``repeats`` runs after ``warmup`` runs, reported as median with min/max;
  prompts are real text (the bundled corpus), the prefix cache is reset each run, and
  eos is ignored so every run decodes the same number of tokens;
* per concurrency level: ``c`` clients each sending requests back to back through the
  same :class:`~supertiny.runtime.serving.scheduler.Scheduler` the server uses; request latency p50/p95/p99
  (queueing included, as a client sees it), TTFT and throughput;
* peak resident memory of the process (what the device must hold), and the baseline
  before the model was loaded.

Budgets come from a :mod:`supertiny.targets` profile; :func:`verdicts` compares the
figures that match each budget (median TTFT and decode speed at the budget's prompt
length, p95 latency at its concurrency, peak RSS, file size).

Example::

    report = bench(["student-q4.gguf"], BenchConfig(prompt_lengths=(32, 256), concurrency=(1, 2)))
    print(format_result(report["results"][0]))  # from .report
"""

from __future__ import annotations

import os
import queue
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from supertiny import schema
from supertiny.backends import BACKENDS, PROVIDERS, batching, cores, threads_for
from supertiny.errors import InvalidInputError, SupertinyError, UserError
from supertiny.evaluate import default_corpus_path, read_text
from supertiny.models import resolve
from supertiny.runtime.bench.loadtest import LoadRun, closed_loop, decode_rate, peak_rss_bytes, percentile, summarize
from supertiny.runtime.engines.base import EngineOptions
from supertiny.runtime.engines.cpu_build import build_report, cpu_flags
from supertiny.runtime.engines.llamacpp import llama_cpp_module
from supertiny.runtime.serving.pool import EnginePool, batching_mode, open_engines, parse_parallel
from supertiny.settings import NON_NEG_INT, POS_INT, Settings, at_least, setting
from supertiny.targets import check

__all__ = ["BenchConfig", "LoadRun", "bench", "bench_artifact", "closed_loop", "decode_rate", "measured_for_budgets",
           "peak_rss_bytes", "percentile", "summarize", "verdicts"]

Progress = Callable[[str, int, int], None]  # (what, done, total)


def _int_list(option: str) -> Any:
    """The parser of a comma list of whole numbers (``"32,256"`` as ``(32, 256)``)."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise InvalidInputError(f"{option} takes whole numbers separated by commas, got {text!r}") from None
    return parse


_COUNTS = schema.expect(lambda v: isinstance(v, (list, tuple)) and bool(v) and all(type(x) is int and x >= 1
                                                                                   for x in v), "whole numbers >= 1")


@dataclass(frozen=True)
class BenchConfig(Settings):
    """What to measure, and how the artifact is opened (a target's budgets add their own: :meth:`for_target`)."""

    prompt_lengths: tuple[int, ...] = setting((32, 256, 1024), "Prompt sizes (tokens) for time to first token and "
                                              "decode speed.", parse=_int_list("--prompt-lengths"), check=_COUNTS,
                                              example=(16, 64))
    new_tokens: int = setting(64, "Tokens decoded per run (decode speed is measured between tokens).",
                              check=at_least(2))
    repeats: int = setting(3, "Measured runs per prompt length.", check=POS_INT)
    warmup: int = setting(1, "Unmeasured runs before them.", check=NON_NEG_INT)
    concurrency: tuple[int, ...] = setting((1, 2, 4), "Simultaneous clients for the latency test.",
                                           parse=_int_list("--concurrency"), check=_COUNTS, example=(1, 8))
    requests: int = setting(8, "Requests per concurrency level (at least one per client).", check=POS_INT)
    request_prompt_tokens: int = setting(128, "Prompt tokens of each latency request.", check=POS_INT,
                                         role="internal")
    request_max_tokens: int = setting(32, "Tokens each latency request decodes.", check=POS_INT, role="internal")
    slots: int = setting(1, "Engines serving requests in parallel (as `serve`).", check=POS_INT)
    parallel: int | None = setting(None, "One engine decoding this many sequences together (0: off): GGUF "
                                   "continuously (as `serve`), ONNX (optimum graph) in static batches. auto: GGUF "
                                   "batches the most concurrent clients measured [default: auto].",
                                   parse=parse_parallel, show=str, check=NON_NEG_INT, metavar="auto|N", example=0)
    threads: int | None = setting(None, "Engine threads (default: the target's, else all cores).", check=POS_INT)
    n_ctx: int | None = setting(None, "Context length (default: what the longest run needs).", check=POS_INT,
                                role="internal")
    backend: str = setting("auto", "The engine backend (auto: the artifact's native one).", choices=BACKENDS)
    gpu_layers: int = setting(0, "llama.cpp layers on the GPU (-1: all).", check=schema.expect(
        lambda v: type(v) is int and v >= -1, "-1 (all) or a count"), example=-1)
    provider: str = setting("cpu", "onnxruntime execution provider.", choices=tuple(PROVIDERS))

    def problems(self) -> list[str]:
        if self.parallel and self.slots > 1:
            return [f"parallel (one batched engine) is not combined with slots > 1 (engine copies): got "
                    f"parallel={self.parallel}, slots={self.slots}"]
        return []

    def parallel_for(self, kind: str) -> int:
        """The sequences one engine batches for an artifact of ``kind`` (0: unbatched)."""
        if self.parallel is not None:
            return self.parallel
        one_engine = batching(kind, self.backend) == "continuous" and self.slots == 1
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
    return [v.to_dict() for v in check(target, measured_for_budgets(result, target))]


# -- measuring one artifact (runs in the child process) ----------------------------------


def _corpus_ids(engine: Any, need: int) -> list[int]:
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


def _concurrency_level(pool: EnginePool, corpus: list[int], clients: int, config: BenchConfig,
                       offset: int) -> dict[str, Any]:
    n = max(config.requests, clients)
    scheduler = pool.scheduler(max_queue=n, request_timeout_s=3600)

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
        "concurrency": clients, "requests": n, "slots": len(pool.engines), "parallel": pool.parallel,
        "request_prompt_tokens": config.request_prompt_tokens, "request_max_tokens": config.request_max_tokens,
        **{k: v * 1000 for k, v in summarize(run.latencies, "latency_ms", (50, 95, 99)).items()},
        **{k: v * 1000 for k, v in summarize(run.ttfts, "ttft_ms", (50, 95)).items()},
        "throughput_tokens_per_s": run.tokens / run.wall_s, "requests_per_s": n / run.wall_s,
        "wall_s": run.wall_s,
    }


class _Steps:
    """The progress callback with its count of steps done (loading, every prompt run, every level)."""

    def __init__(self, config: BenchConfig, progress: Progress | None) -> None:
        self.report = progress or (lambda what, done, total: None)
        self.done = 0
        self.total = 1 + len(config.prompt_lengths) * (config.warmup + config.repeats) + len(config.concurrency)

    def start(self, what: str) -> None:
        self.report(what, self.done, self.total)

    def end(self) -> None:
        self.done += 1


def _prompt_rows(engine: Any, corpus: list[int], config: BenchConfig, steps: _Steps) -> list[dict[str, Any]]:
    """TTFT, prompt and decode speed per prompt length (the medians of ``repeats`` runs after ``warmup``)."""
    rows = []
    for length in config.prompt_lengths:
        runs = []
        for i in range(config.warmup + config.repeats):
            steps.start(f"prompt {length}, run {i + 1}/{config.warmup + config.repeats}")
            times = _timed_run(engine, corpus[:length], config.new_tokens)
            steps.end()
            if i >= config.warmup:
                runs.append(times)
        ttft = [t[0] * 1000 for t in runs]
        rows.append({
            "prompt_tokens": length, "new_tokens": config.new_tokens, "runs": len(runs),
            **summarize(ttft, "ttft_ms"),
            **summarize([length / (t[0]) for t in runs], "prompt_tokens_per_s"),
            **summarize([decode_rate(t) for t in runs], "decode_tokens_per_s"),
        })
    return rows


def _levels(pool: EnginePool, corpus: list[int], config: BenchConfig, steps: _Steps) -> list[dict[str, Any]]:
    """Latency and throughput at each concurrency level, through the scheduler the server would use."""
    levels: list[dict[str, Any]] = []
    for c in config.concurrency:
        steps.start(f"{c} concurrent clients")
        for e in pool.engines:  # no prefix cached from the runs before: every request prefills in full
            e.reset()
        levels.append(_concurrency_level(pool, corpus, c, config, offset=(len(levels) + 1) * 1009))
        steps.end()
    return levels


def _llama_build(notes: list[str]) -> dict[str, Any]:
    """What the llama.cpp build uses of this CPU (a note when it leaves features unused)."""
    build = build_report(llama_cpp_module().llama_print_system_info().decode(errors="replace"), cpu_flags())
    if build["unused_by_build"]:
        notes.append(f"this llama.cpp build leaves {', '.join(build['unused_by_build'])} of this CPU unused; "
                     "`make llama` rebuilds it for this CPU")
    return build


def bench_artifact(artifact: str, config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Measure one artifact in this process (:func:`bench` runs it in a child)."""
    kind, path = resolve(artifact)
    steps = _Steps(config, progress)
    baseline = peak_rss_bytes()
    n_cores = cores()
    threads = threads_for(config.threads, cap=True)
    notes = []
    if threads != (config.threads or threads):
        notes.append(f"asked for {config.threads} threads; this machine has {n_cores} cores, so {n_cores} were used")
    longest = max(*config.prompt_lengths, config.request_prompt_tokens)
    n_ctx = config.n_ctx or (longest + max(config.new_tokens, config.request_max_tokens) + 16 if kind == "gguf"
                             else None)
    parallel = config.parallel_for(kind)
    batching_mode(path, kind, config.backend, config.slots, parallel)  # refused before anything loads
    steps.start("loading")
    t0 = time.perf_counter()
    options = EngineOptions(threads=threads, n_ctx=n_ctx, gpu_layers=config.gpu_layers, provider=config.provider)
    with open_engines(path, kind, config.backend, options, config.slots, parallel) as pool:
        engine = pool.engines[0]
        corpus = _corpus_ids(engine, longest + 1)
        if config.gpu_layers and not getattr(engine, "gpu_offload", True):
            notes.append(f"gpu_layers={config.gpu_layers} asked, but this llama.cpp build has no GPU backend: "
                         "ran on the CPU")
        load_s = time.perf_counter() - t0
        steps.end()
        if longest + config.new_tokens > engine.n_ctx:
            raise InvalidInputError(f"prompts of {longest} tokens + {config.new_tokens} new ones exceed the "
                                    f"model's context of {engine.n_ctx}")
        prompts = _prompt_rows(engine, corpus, config, steps)
        levels = _levels(pool, corpus, config, steps)
        steps.start("done")
        result = {
            "artifact": str(path), "format": kind, "backend": engine.backend_label, "threads": threads,
            "n_ctx": engine.n_ctx, "slots": config.slots, "parallel": parallel,
            "file_size_mb": engine.info["file_bytes"] / 2**20,
            "load_s": load_s, "baseline_rss_mb": baseline / 2**20, "peak_rss_mb": peak_rss_bytes() / 2**20,
            "prompts": prompts, "concurrency": levels, "notes": notes,
            "machine": {"cores": n_cores, "platform": sys.platform},
        }
        if kind == "gguf" and "llama.cpp" in engine.backend_label:
            result["llama_cpp_build"] = _llama_build(notes)
    return result


# -- several artifacts, each in its own process -------------------------------------------


def _child(artifact: str, config: BenchConfig, out: Any) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from supertiny.runtime.engines.process import keep_torch_out

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
