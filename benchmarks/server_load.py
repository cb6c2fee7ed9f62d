"""The OpenAI-compatible server under load: throughput and latency at 1..16 clients.

``supertiny serve MODEL`` (``--model``: the default teacher's Q4_1 GGUF unless given; several files,
comma-separated, one row group each) runs in its own process, as in production; clients run in threads of
this process, each sending streaming chat requests back to back (a different corpus excerpt each, so no two
prompts share a cached prefix; greedy; a fixed number of new tokens). The client is a lean ``http.client``
one by default (``--client openai``: the official client, whose per-chunk objects cost the shared cores
noticeably). Measured per concurrency level: request latency p50/p95 (queueing included, as a client sees
it), time to first token p50/p95, completion tokens/s and requests/s over the level's wall time, any
429/5xx answers, and the server's CPU per generated token: the whole process's and its main thread's (the
event loop: HTTP, SSE, JSON; the engine runs in other threads). Two server layouts on the same cores: one
slot with all threads, and one slot per core (``--slots``), one thread each.

``--parallel N`` serves with continuous batching instead (one batched engine, all threads). With it,
``--engine`` runs every level through the same batched engine in this process too (no HTTP), interleaved
level by level with the server, and ``--against DIR`` adds the server of another checkout (e.g. a git
worktree of the commit before a change); ``--rounds R`` repeats the interleaving and keeps the best of each:
one table of server / engine / before, their ratios to one stream, TTFT and CPU per token.

``--per-client K`` makes every level a sustained test of ``clients x K`` requests (issue 13's: 16 clients x
50). ``--burst M`` then sends M requests at once: more than ``parallel + --max-queue`` must get 429
(intended), and nothing else may fail. The server's peak RSS (``VmHWM``) is read at the end.

Run:  .venv/bin/python benchmarks/server_load.py [--levels 1,2,4,8,16] [--max-tokens 32]
      .venv/bin/python benchmarks/server_load.py --parallel 16 --levels 16 --per-client 50 --max-tokens 16 \
          --prompt-words 20 --max-queue 16 --burst 64
      .venv/bin/python benchmarks/server_load.py --engine --parallel 8 --model A.gguf,B.gguf --levels 1,2,4,8,16 \
          --max-tokens 64 --per-client 4 --prompt-words 8 --rounds 2 [--against /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _common import cpu_seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(slots: int, threads: int, port: int, parallel: int = 0, max_queue: int = 64,
                 model: str = "default", cwd: str | None = None) -> subprocess.Popen:
    """``supertiny serve`` in its own process (from the checkout ``cwd``, if given), once it answers."""
    layout = ["--parallel", str(parallel)] if parallel else ["--parallel", "0", "--slots", str(slots)]
    cmd = [sys.executable, "-m", "supertiny", "serve", model, "--port", str(port), *layout,
           "--threads", str(threads), "--max-queue", str(max_queue), "--n-ctx", "512" if parallel else "1024",
           "--timeout", "600", "--model-name", "smollm2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd)
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


def chat(i: int, prompts: list[str], system: list[dict]) -> list[dict]:
    """Request ``i``'s messages: the system message if any, then a corpus excerpt to summarize."""
    return [*system, {"role": "user", "content": f"Summarize: {prompts[i % len(prompts)]}"}]


class StatusError(Exception):
    """A non-200 answer to the lean client (``status_code`` as the openai client's errors have)."""

    def __init__(self, status_code: int, body: bytes):
        super().__init__(f"HTTP {status_code}: {body[:200]!r}")
        self.status_code = status_code


def lean_send(port: int, max_tokens: int, prompts: list[str], system: list[dict]):
    """A streaming chat client that costs the machine as little as a client can: one
    ``http.client`` connection, each SSE line parsed once. The ``openai`` client (``--client
    openai``) builds pydantic objects per chunk, which on a 2-core machine takes CPU from the
    server it measures; a real deployment's clients are elsewhere."""
    import http.client
    import json

    def send(i: int):
        body = json.dumps({"model": "smollm2", "stream": True, "temperature": 0, "max_tokens": max_tokens,
                           "stream_options": {"include_usage": True}, "ignore_eos": True,
                           "messages": chat(i, prompts, system)})
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise StatusError(resp.status, resp.read())
            pieces = 0
            for line in resp:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                event = json.loads(line[6:])
                if event.get("error"):
                    raise RuntimeError(f"stream error: {event['error']}")
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    pieces += 1
                    yield 1  # at least one token per piece; the usage event brings the rest of the count
                if event.get("usage"):
                    yield event["usage"]["completion_tokens"] - pieces
        finally:
            conn.close()

    return send


def openai_send(port: int, max_tokens: int, prompts: list[str], system: list[dict]):
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600)

    def send(i: int):
        stream = client.chat.completions.create(
            model="smollm2", stream=True, temperature=0, max_tokens=max_tokens,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            messages=chat(i, prompts, system))
        pieces = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces += 1
                yield 1
            if chunk.usage:
                yield chunk.usage.completion_tokens - pieces

    return send


def summarize(run, clients: int, status_error: type) -> dict:
    from supertiny.runtime.bench.measure import percentile

    unexpected = [e for e in run.errors if not isinstance(e, status_error)]
    if unexpected:
        raise unexpected[0]
    if not run.latencies:
        return {"clients": clients, "ok": 0, "errors": run.errors, "n429": len(run.errors)}
    return {"clients": clients, "ok": len(run.latencies), "errors": run.errors,
            "n429": sum(e.status_code == 429 for e in run.errors), "tokens": run.tokens, "wall": run.wall_s,
            "p50": percentile(run.latencies, 50) * 1000, "p95": percentile(run.latencies, 95) * 1000,
            "ttft50": percentile(run.ttfts, 50) * 1000, "ttft95": percentile(run.ttfts, 95) * 1000,
            "tok_s": run.tokens / run.wall_s, "req_s": len(run.latencies) / run.wall_s}


def run_level(port: int, clients: int, requests: int, max_tokens: int, prompts: list[str],
              system_prompt: str | None = None, client: str = "lean", server_pid: int | None = None) -> dict:
    """``clients`` closed-loop clients against the server; with ``server_pid``, also the server's and
    this (client) process's CPU seconds per generated token."""
    from supertiny.runtime.bench.measure import closed_loop

    # no system message: the chat template adds its own (SmolLM2's: ~20 tokens)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    if client == "openai":
        import openai

        send, status_error = openai_send(port, max_tokens, prompts, system), openai.APIStatusError
    else:
        send, status_error = lean_send(port, max_tokens, prompts, system), StatusError
    server0 = cpu_seconds(server_pid) if server_pid else 0.0
    loop0 = cpu_seconds(server_pid, server_pid) if server_pid else 0.0
    client0 = cpu_seconds()
    run = closed_loop(clients, requests, send)
    result = summarize(run, clients, status_error)
    if server_pid and run.tokens:
        result["server_ms_tok"] = (cpu_seconds(server_pid) - server0) * 1000 / run.tokens
        # the main thread runs the event loop: HTTP, SSE encoding, JSON (the engine runs in other threads)
        result["loop_ms_tok"] = (cpu_seconds(server_pid, server_pid) - loop0) * 1000 / run.tokens
        result["client_ms_tok"] = (cpu_seconds() - client0) * 1000 / run.tokens
    return result


def engine_level(scheduler, clients: int, requests: int, max_tokens: int, prompts: list[str],
                 system_prompt: str | None = None) -> dict:
    """The same requests through the batched engine's own scheduler in this process: no HTTP, no
    event loop, no client, the text layer per token as the server has it."""
    from supertiny.runtime.bench.measure import closed_loop

    system = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def send(i: int):
        for chunk in scheduler.submit(chat(i, prompts, system), max_tokens, ignore_eos=True):
            yield len(chunk.token_ids)

    cpu0 = cpu_seconds()
    result = summarize(closed_loop(clients, requests, send), clients, Exception)
    result["server_ms_tok"] = (cpu_seconds() - cpu0) * 1000 / max(1, result.get("tokens", 0))
    return result


def compare(args, levels: list[int], prompts: list[str], requests_at) -> None:
    """Server vs the batched engine in this process, and optionally vs the server of another checkout
    (``--against``), interleaved: every round runs each level on each of them in turn, so a shared
    machine's drift hits all alike; the best round of each is kept."""
    from supertiny.models import resolve
    from supertiny.runtime.engines.base import EngineOptions
    from supertiny.runtime.serving.pool import open_engines

    threads = args.cores
    rows = []
    for model in args.model.split(","):
        label = Path(model).name if model != "default" else "default (Q4_1)"
        servers = {"server": (free_port(), None)}
        if args.against:
            servers["before"] = (free_port(), args.against)
        procs = {name: start_server(1, threads, port, args.parallel, args.max_queue, model, cwd)
                 for name, (port, cwd) in servers.items()}
        kind, path = resolve(model)
        best: dict[tuple[str, int], dict] = {}
        try:
            with open_engines(path, kind, "auto", EngineOptions(threads=threads, n_ctx=512), 1,
                              args.parallel) as pool:
                scheduler = pool.scheduler(args.max_queue, None)
                try:
                    engine_level(scheduler, 1, 2, 4, prompts)  # warm-up
                    for port, _ in servers.values():
                        run_level(port, 1, 2, 4, prompts, client=args.client)
                    for _ in range(args.rounds):
                        for c in levels:
                            n = requests_at(c)
                            got = {name: run_level(port, c, n, args.max_tokens, prompts, args.system, args.client,
                                                   procs[name].pid) for name, (port, _) in servers.items()}
                            got["engine"] = engine_level(scheduler, c, n, args.max_tokens, prompts, args.system)
                            for name, r in got.items():
                                if r["ok"] != n:
                                    raise RuntimeError(f"{name}: {n - r['ok']} of {n} requests failed")
                                if (name, c) not in best or r["tok_s"] > best[name, c]["tok_s"]:
                                    best[name, c] = r
                            print(f"  {label} c={c}: " + ", ".join(f"{k} {v['tok_s']:.1f}" for k, v in got.items())
                                  + " tok/s", file=sys.stderr, flush=True)
                finally:
                    scheduler.close()
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(timeout=60)
        rows.append((label, best))
    one, names = levels[0], ["server", "engine"] + (["before"] if args.against else [])
    print(f"\nserver vs the batched engine in this process (--parallel {args.parallel}, {threads} threads, same "
          f"requests; best of {args.rounds} interleaved round(s)); 'vs {one}' = tokens/s over the {one}-stream "
          "level's; CPU ms/token: the server process's (the engine's: this process's)"
          + (f"; before = the server of {args.against}" if args.against else ""))
    head = "| file | streams | server tok/s | engine tok/s | server / engine | server vs 1 | engine vs 1 "
    rule = "|---|---|---|---|---|---|---|"
    if args.against:
        head += "| before tok/s | before vs 1 | server / before "
        rule += "---|---|---|"
    head += ("| TTFT p50 ms " + " / ".join(names) + " | CPU ms/token " + " / ".join(names)
             + " | event-loop CPU ms/token " + " / ".join(n for n in names if n != "engine") + " |")
    rule += "---|---|---|"
    print(head)
    print(rule)
    for label, best in rows:
        for c in levels:
            s_, e_ = best["server", c], best["engine", c]
            line = (f"| {label} | {c} | {s_['tok_s']:.1f} | {e_['tok_s']:.1f} | {s_['tok_s'] / e_['tok_s']:.2f}x "
                    f"| {s_['tok_s'] / best['server', one]['tok_s']:.2f}x "
                    f"| {e_['tok_s'] / best['engine', one]['tok_s']:.2f}x ")
            if args.against:
                b_ = best["before", c]
                line += (f"| {b_['tok_s']:.1f} | {b_['tok_s'] / best['before', one]['tok_s']:.2f}x "
                         f"| {s_['tok_s'] / b_['tok_s']:.2f}x ")
            line += ("| " + " / ".join(f"{best[n, c]['ttft50']:.0f}" for n in names)
                     + " | " + " / ".join(f"{best[n, c]['server_ms_tok']:.2f}" for n in names)
                     + " | " + " / ".join(f"{best[n, c]['loop_ms_tok']:.3f}" for n in names if n != "engine") + " |")
            print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="what to serve: default, a .gguf file, or several "
                    "comma-separated (one table row group each)")
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
    ap.add_argument("--client", choices=("lean", "openai"), default="lean",
                    help="lean: http.client, one JSON parse per event; openai: the official client")
    ap.add_argument("--engine", action="store_true", help="with --parallel: compare the server with the batched "
                    "engine in this process, level by level, interleaved (see compare())")
    ap.add_argument("--against", default=None, metavar="DIR", help="with --engine: also the server of another "
                    "checkout (its `python -m supertiny`), e.g. a git worktree of the commit before a change")
    ap.add_argument("--rounds", type=int, default=1, help="with --engine: interleaved rounds (best kept)")
    args = ap.parse_args()
    if args.engine and not args.parallel:
        ap.error("--engine compares the server with the batched engine: give --parallel N")
    levels = [int(x) for x in args.levels.split(",")]
    prompts = excerpts(997, args.prompt_words)
    if args.parallel:
        layouts = [(1, args.cores, args.parallel)]
    else:
        layouts = [(1, args.cores, 0), (args.cores, 1, 0)] if args.cores > 1 else [(1, 1, 0)]

    def requests_at(c: int) -> int:
        return args.per_client * c if args.per_client else max(8, 2 * c)

    if args.engine:
        return compare(args, levels, prompts, requests_at)
    system = f", system message {args.system!r}" if args.system else ""
    per_level = f"{args.per_client} x clients" if args.per_client else "max(8, 2 x clients)"
    print(f"llama.cpp; {args.cores} cores; streaming chat ({args.client} client, in another process), "
          f"{args.prompt_words}-word prompts{system}, {args.max_tokens} new tokens, greedy; requests per level = "
          f"{per_level}; --max-queue {args.max_queue}\n")
    print("| file | layout | clients | ok | 429 | other errors | p50 ms | p95 ms | TTFT p50 ms | TTFT p95 ms "
          "| tokens/s | req/s | server CPU ms/token | event-loop CPU ms/token | client CPU ms/token |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.model.split(","):
        label = Path(model).name if model != "default" else "default (Q4_1)"
        for slots, threads, parallel in layouts:
            name = (f"--parallel {parallel}, {threads} threads" if parallel
                    else f"{slots} slot(s) x {threads} thread(s)")
            port = free_port()
            proc = start_server(slots, threads, port, parallel, args.max_queue, model)
            served: dict[int, dict] = {}
            try:
                run_level(port, 1, 2, 4, prompts, client=args.client)  # warm-up
                for c in levels:
                    r = served[c] = run_level(port, c, requests_at(c), args.max_tokens, prompts, args.system,
                                              args.client, proc.pid)
                    print(f"| {label} | {name} | {c} | {r['ok']} | {r['n429']} | {len(r['errors']) - r['n429']} "
                          f"| {r['p50']:.0f} | {r['p95']:.0f} | {r['ttft50']:.0f} | {r['ttft95']:.0f} "
                          f"| {r['tok_s']:.1f} | {r['req_s']:.2f} | {r.get('server_ms_tok', 0):.2f} "
                          f"| {r.get('loop_ms_tok', 0):.3f} | {r.get('client_ms_tok', 0):.2f} |", flush=True)
                if args.burst:
                    r = run_level(port, args.burst, args.burst, args.max_tokens, prompts, args.system, args.client)
                    capacity = (parallel or slots) + args.max_queue
                    print(f"\nburst: {args.burst} requests at once -> {r['ok']} answered, {r['n429']} x 429 "
                          f"(expected about {max(0, args.burst - capacity)}: capacity {capacity} = running + "
                          f"queue), {len(r['errors']) - r['n429']} other errors")
                rss = peak_rss_mb(proc.pid)
                print(f"server peak RSS ({label}, {name}): "
                      + (f"{rss:.0f} MiB" if rss is not None else "unknown (no /proc)"))
            finally:
                proc.terminate()
                proc.wait(timeout=60)


if __name__ == "__main__":
    main()
