"""The OpenAI-compatible server under load: throughput and latency at 1..16 clients.

``supertiny serve default`` (the default teacher's Q4_1 GGUF in llama.cpp) runs in its
own process, as in production; clients are the official ``openai`` client in threads,
each sending streaming chat requests back to back (a different corpus excerpt each,
so no two prompts share a cached prefix; greedy; a fixed number of new tokens).
Measured per concurrency level: request latency p50/p95 (queueing included, as a
client sees it), time to first token p50/p95, completion tokens/s and requests/s over
the level's wall time, and any 429/5xx answers. Two server layouts on the same cores:
one slot with all threads, and one slot per core (``--slots``), one thread each.

Run:  .venv/bin/python benchmarks/server_load.py [--levels 1,2,4,8,16] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request

PROMPT_WORDS = 60  # about 80 tokens with the chat template


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(slots: int, threads: int, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "supertiny", "serve", "default", "--port", str(port), "--slots", str(slots),
           "--threads", str(threads), "--max-queue", "64", "--n-ctx", "1024", "--timeout", "600",
           "--model-name", "smollm2"]
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


def excerpts(n: int) -> list[str]:
    from supertiny.evaluate import default_corpus_path, read_text

    words = read_text(default_corpus_path()).split()
    return [" ".join(words[i * 131: i * 131 + PROMPT_WORDS]) for i in range(n)]


def run_level(port: int, clients: int, requests: int, max_tokens: int, prompts: list[str]) -> dict:
    import openai

    from supertiny.runtime.bench import closed_loop, percentile

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600)

    def send(i: int):
        stream = client.chat.completions.create(
            model="smollm2", stream=True, temperature=0, max_tokens=max_tokens,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            messages=[{"role": "user", "content": f"Summarize: {prompts[i % len(prompts)]}"}])
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
    return {"clients": clients, "ok": len(run.latencies), "errors": run.errors,
            "p50": percentile(run.latencies, 50) * 1000, "p95": percentile(run.latencies, 95) * 1000,
            "ttft50": percentile(run.ttfts, 50) * 1000, "ttft95": percentile(run.ttfts, 95) * 1000,
            "tok_s": run.tokens / run.wall_s, "req_s": len(run.latencies) / run.wall_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    prompts = excerpts(64)
    layouts = [(1, args.cores), (args.cores, 1)] if args.cores > 1 else [(1, 1)]
    print(f"default teacher Q4_1 GGUF, llama.cpp; {args.cores} cores; streaming chat, ~80-token prompts, "
          f"{args.max_tokens} new tokens, greedy; requests per level = max(8, 2 x clients)\n")
    print("| slots x threads | clients | ok | 429/5xx | p50 ms | p95 ms | TTFT p50 ms | TTFT p95 ms | tokens/s "
          "| req/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for slots, threads in layouts:
        port = free_port()
        proc = start_server(slots, threads, port)
        try:
            run_level(port, 1, 2, 4, prompts)  # warm-up
            for c in levels:
                r = run_level(port, c, max(8, 2 * c), args.max_tokens, prompts)
                print(f"| {slots} x {threads} | {c} | {r['ok']} | {len(r['errors'])} | {r['p50']:.0f} | "
                      f"{r['p95']:.0f} | {r['ttft50']:.0f} | {r['ttft95']:.0f} | {r['tok_s']:.1f} | "
                      f"{r['req_s']:.2f} |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
