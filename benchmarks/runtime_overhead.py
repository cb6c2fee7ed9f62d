"""What supertiny's engine costs over the raw backends, on the same files and threads.

One run, side by side, runs interleaved (A, B, C, A, B, C, ...) so that drift in the
machine's speed hits every row alike; medians of ``--repeats``:

* GGUF (the default teacher's Q4_1 file): ``Engine.stream_text`` (chat-free text
  level: detokenization, stop handling) vs llama-cpp-python's raw ``Llama.generate``
  loop with the same greedy sampler, context and threads;
* ONNX (the default teacher exported ``--format genai --quant int4`` and ``--quant
  int4`` optimum graph): ``Engine.stream_text`` vs the plain onnxruntime loop a user
  would write (``session.run`` with numpy, presents fed back as pasts) and, for the
  genai graph, onnxruntime-genai's own generator.

The engine must decode at >= 0.97x the raw backend (issue 6); the table prints the ratio.

Run:  .venv/bin/python benchmarks/runtime_overhead.py [--threads 2] [--repeats 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import start

PROMPT_TOKENS = 128


def engine_run(engine, prompt: list[int], new: int) -> list[float]:
    """Seconds to each token through the whole text level (stream_text, eos ignored)."""
    engine.reset()
    t0 = time.perf_counter()
    times = []
    for chunk in engine.stream_text(prompt, max_tokens=new, ignore_eos=True):
        now = time.perf_counter() - t0
        times += [now] * len(chunk.token_ids)
    return times


def llama_raw(path: Path, threads: int, n_ctx: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          verbose=False)

    def run(prompt: list[int], new: int) -> list[float]:
        llm.reset()
        t0 = time.perf_counter()
        times = []
        for _ in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter() - t0)
            if len(times) == new:
                break
        return times

    return run


def onnx_raw(folder: Path, threads: int):
    """The loop a user writes from onnxruntime's docs: numpy in, numpy out."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    pasts = [n for n in inputs if n.startswith("past_key_values.")]
    dtype = np.float16 if inputs[pasts[0]].type == "tensor(float16)" else np.float32
    import json

    from supertiny.archs import shape

    dims = shape(json.loads((folder / "config.json").read_text()))
    kv, hd = dims.kv_heads, dims.head_dim

    def run(prompt: list[int], new: int) -> list[float]:
        t0 = time.perf_counter()
        feeds = {n: np.zeros((1, kv, 0, hd), dtype=dtype) for n in pasts}
        ids, length, times = list(prompt), 0, []
        while len(times) < new:
            feeds["input_ids"] = np.array([ids], dtype=np.int64)
            if "attention_mask" in inputs:
                feeds["attention_mask"] = np.ones((1, length + len(ids)), dtype=np.int64)
            if "position_ids" in inputs:
                feeds["position_ids"] = np.arange(length, length + len(ids), dtype=np.int64)[None]
            out = dict(zip(outputs, sess.run(None, feeds), strict=True))
            length += len(ids)
            ids = [int(out["logits"][0, -1].argmax())]
            times.append(time.perf_counter() - t0)
            for n in pasts:
                feeds[n] = out[n.replace("past_key_values", "present")]
        return times

    return run


def genai_raw(folder: Path, threads: int):
    import json

    import onnxruntime_genai as og

    view = Path(tempfile.mkdtemp(prefix="supertiny-genai-view-"))
    for f in folder.iterdir():
        if f.name != "genai_config.json":
            os.symlink(f, view / f.name)
    cfg = json.loads((folder / "genai_config.json").read_text())
    cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    (view / "genai_config.json").write_text(json.dumps(cfg))
    model = og.Model(str(view))

    def run(prompt: list[int], new: int) -> list[float]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(prompt) + new, min_length=len(prompt) + new)
        t0 = time.perf_counter()
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        times = []
        while len(times) < new and not gen.is_done():
            gen.generate_next_token()
            times.append(time.perf_counter() - t0)
        return times

    return run


def summarize(runs: list[list[float]]) -> tuple[float, float]:
    from supertiny.runtime.bench.measure import decode_rate

    return statistics.median(r[0] for r in runs) * 1000, statistics.median(decode_rate(r) for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    args, work = start(ap, "supertiny-overhead-", keep_help="Keep the ONNX exports here (reused when present).")
    from supertiny.evaluate import default_corpus_path, read_text
    from supertiny.models import default_teacher_path
    from supertiny.runtime.engines.base import open_engine
    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx

    exports = {"genai int4": {"format": "genai", "quant": "int4"}, "optimum int4": {"quant": "int4"}}
    for name, kw in exports.items():
        out = work / name.replace(" ", "-")
        if not (out / "model.onnx").is_file():
            print(f"exporting {name} ...", file=sys.stderr)
            export_onnx("default", out, OnnxExportConfig(verify=False, threads=args.threads, **kw))
    gguf = default_teacher_path()
    n_ctx = PROMPT_TOKENS + args.new_tokens + 16
    cases = []  # (artifact, {runner name: run function})
    eng = open_engine(gguf, threads=args.threads, n_ctx=n_ctx)
    prompt = eng.encode(read_text(default_corpus_path()), add_special=False)[:PROMPT_TOKENS]
    cases.append((f"GGUF {gguf.name}", {"supertiny engine": lambda p, n, e=eng: engine_run(e, p, n),
                                         "llama-cpp-python Llama.generate": llama_raw(gguf, args.threads, n_ctx)}))
    for name in exports:
        folder = work / name.replace(" ", "-")
        e = open_engine(folder, threads=args.threads)
        runners = {"supertiny engine": lambda p, n, e=e: engine_run(e, p, n),
                   "onnxruntime session.run loop": onnx_raw(folder, args.threads)}
        if name.startswith("genai"):
            runners["onnxruntime-genai generator"] = genai_raw(folder, args.threads)
        cases.append((f"ONNX {name}", runners))

    print(f"{args.threads} threads, {PROMPT_TOKENS}-token prompt, {args.new_tokens} tokens decoded, greedy, "
          f"median of {args.repeats} interleaved runs after one warm-up each\n")
    print("| artifact | runtime | TTFT ms | decode tok/s | engine / this runtime (decode) |")
    print("|---|---|---|---|---|")
    for artifact, runners in cases:
        runs: dict[str, list[list[float]]] = {name: [] for name in runners}
        for run in runners.values():
            run(prompt, 8)  # warm-up
        for _ in range(args.repeats):
            for name, run in runners.items():
                times = run(prompt, args.new_tokens)
                assert len(times) == args.new_tokens, (name, len(times))
                runs[name].append(times)
        ours = summarize(runs["supertiny engine"])
        for name, r in runs.items():
            ttft, rate = summarize(r)
            ratio = "" if name == "supertiny engine" else f"{ours[1] / rate:.3f}x"
            print(f"| {artifact} | {name} | {ttft:.0f} | {rate:.1f} | {ratio} |", flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
