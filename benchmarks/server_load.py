"""The OpenAI-compatible server under load: throughput and latency at 1..16 clients.

``supertiny serve default`` (the default teacher's Q4_1 GGUF in llama.cpp) runs in its
own process, as in production; clients are the official ``openai`` client in threads,
each sending streaming chat requests back to back (a different corpus excerpt each,
so no two prompts share a cached prefix; greedy; a fixed number of new tokens).
Measured per concurrency level: request latency p50/p95 (queueing included, as a
client sees it), time to first token p50/p95, completion tokens/s and requests/s over
the level's wall time, and any 429/5xx answers. Two server layouts on the same cores:
one slot with all threads, and one slot per core (``--slots``), one thread each.

``--parallel N`` serves with continuous batching instead (one batched engine, all
threads). ``--per-client K`` makes every level a sustained test of ``clients x K``
requests (issue 13's: 16 clients x 50). ``--burst M`` then sends M requests at once:
more than ``parallel + --max-queue`` must get 429 (intended), and nothing else may
fail. The server's peak RSS (``VmHWM``) is read at the end.

Run:  .venv/bin/python benchmarks/server_load.py [--levels 1,2,4,8,16] [--max-tokens 32]
      .venv/bin/python benchmarks/server_load.py --parallel 16 --levels 16 --per-client 50 --max-tokens 16 \
          --prompt-words 20 --max-queue 16 --burst 64
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(slots: int, threads: int, port: int, parallel: int = 0, max_queue: int = 64) -> subprocess.Popen:
    layout = ["--parallel", str(parallel)] if parallel else ["--parallel", "0", "--slots", str(slots)]
    cmd = [sys.executable, "-m", "supertiny", "serve", "default", "--port", str(port), *layout,
           "--threads", str(threads), "--max-queue", str(max_queue), "--n-ctx", "512" if parallel else "1024",
           "--timeout", "600", "--model-name", "smollm2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("server did not come up")


def excerpts(n: int, words_per_prompt: int) -> list[str]:
    from supertiny.evaluate import default_corpus_path, read_text

    words = read_text(default_corpus_path()).split()
    return [" ".join(words[(i * 131) % (len(words) - words_per_prompt):][:words_per_prompt]) for i in range(n)]


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (Linux ``VmHWM``), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def run_level(port: int, clients: int, requests: int, max_tokens: int, prompts: list[str],
              system_prompt: str | None = None) -> dict:
    import openai

    from supertiny.runtime.bench.measure import closed_loop, percentile

    # no system message: the chat template adds its own (SmolLM2's: ~20 tokens)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600)

    def send(i: int):
        stream = client.chat.completions.create(
            model="smollm2", stream=True, temperature=0, max_tokens=max_tokens,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            messages=[*system, {"role": "user", "content": f"Summarize: {prompts[i % len(prompts)]}"}])
        pieces = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                yield 1  # at least one token per piece; the usage chunk brings the rest of the count
            if chunk.usage:
                yield chunk.usage.completion_tokens - pieces

    run = closed_loop(clients, requests, send)
    unexpected = [e for e in run.errors if not isinstance(e, openai.APIStatusError)]
    if unexpected:
        raise unexpected[0]
    if not run.latencies:
        return {"clients": clients, "ok": 0, "errors": run.errors, "n429": len(run.errors)}
    return {"clients": clients, "ok": len(run.latencies), "errors": run.errors,
            "n429": sum(e.status_code == 429 for e in run.errors),
            "p50": percentile(run.latencies, 50) * 1000, "p95": percentile(run.latencies, 95) * 1000,
            "ttft50": percentile(run.ttfts, 50) * 1000, "ttft95": percentile(run.ttfts, 95) * 1000,
            "tok_s": run.tokens / run.wall_s, "req_s": len(run.latencies) / run.wall_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--parallel", type=int, default=0, help="serve with --parallel N (continuous batching)")
    ap.add_argument("--per-client", type=int, default=0, help="requests per client at every level (0: "
                    "max(8, 2 x clients) per level)")
    ap.add_argument("--burst", type=int, default=0, help="then this many requests at once (429s expected)")
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=60, help="60: about 80 tokens with the chat template")
    ap.add_argument("--system", default=None, help="a system message (default: the chat template's own)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    prompts = excerpts(997, args.prompt_words)
    if args.parallel:
        layouts = [(1, args.cores, args.parallel)]
    else:
        layouts = [(1, args.cores, 0), (args.cores, 1, 0)] if args.cores > 1 else [(1, 1, 0)]
    system = f", system message {args.system!r}" if args.system else ""
    per_level = f"{args.per_client} x clients" if args.per_client else "max(8, 2 x clients)"
    print(f"default teacher Q4_1 GGUF, llama.cpp; {args.cores} cores; streaming chat, {args.prompt_words}-word "
          f"prompts{system}, {args.max_tokens} new tokens, greedy; requests per level = {per_level}; "
          f"--max-queue {args.max_queue}\n")
    print("| layout | clients | ok | 429 | other errors | p50 ms | p95 ms | TTFT p50 ms | TTFT p95 ms | tokens/s "
          "| req/s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for slots, threads, parallel in layouts:
        name = f"--parallel {parallel}, {threads} threads" if parallel else f"{slots} slot(s) x {threads} thread(s)"
        port = free_port()
        proc = start_server(slots, threads, port, parallel, args.max_queue)
        try:
            run_level(port, 1, 2, 4, prompts)  # warm-up
            for c in levels:
                n = args.per_client * c if args.per_client else max(8, 2 * c)
                t0 = time.perf_counter()
                r = run_level(port, c, n, args.max_tokens, prompts, args.system)
                print(f"| {name} | {c} | {r['ok']} | {r['n429']} | {len(r['errors']) - r['n429']} | {r['p50']:.0f} "
                      f"| {r['p95']:.0f} | {r['ttft50']:.0f} | {r['ttft95']:.0f} | {r['tok_s']:.1f} | "
                      f"{r['req_s']:.2f} | {time.perf_counter() - t0:.0f} |", flush=True)
            if args.burst:
                r = run_level(port, args.burst, args.burst, args.max_tokens, prompts, args.system)
                capacity = (parallel or slots) + args.max_queue
                print(f"\nburst: {args.burst} requests at once -> {r['ok']} answered, {r['n429']} x 429 (expected "
                      f"about {max(0, args.burst - capacity)}: capacity {capacity} = running + queue), "
                      f"{len(r['errors']) - r['n429']} other errors")
            rss = peak_rss_mb(proc.pid)
            print(f"server peak RSS ({name}): " + (f"{rss:.0f} MiB" if rss is not None else "unknown (no /proc)"))
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
