"""``supertiny serve``: an artifact behind an OpenAI-compatible HTTP API (:mod:`supertiny.runtime.serving`)."""

from __future__ import annotations

import click

from supertiny.backends import BACKENDS, DTYPES, PROVIDERS
from supertiny.cli.core import main, quiet_transformers
from supertiny.runtime.engines.base import EngineOptions
from supertiny.runtime.engines.process import keep_torch_out
from supertiny.runtime.serving import server
from supertiny.runtime.serving.pool import parse_parallel


@main.command("serve")
@click.argument("artifact")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; 0.0.0.0 exposes the server to the network.")
@click.option("--port", default=8000, show_default=True, help="TCP port (0: any free one).")
@click.option("--api-key", envvar="SUPERTINY_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' (or set SUPERTINY_API_KEY).")
@click.option("--slots", default=1, show_default=True, help="Model copies decoding requests in parallel.")
@click.option("--parallel", default="auto", show_default=True,
              help="Sequences decoded together in one batched engine: GGUF continuously, ONNX (optimum graph) in "
              "static batches (0: off; auto: 4 for GGUF with one slot).")
@click.option("--max-queue", default=16, show_default=True, help="Requests waiting for a slot before 429.")
@click.option("--max-tokens-limit", default=2048, show_default=True, help="Largest max_tokens a request may ask.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="Seconds a request may wait and run before it gets 504.")
@click.option("--threads", type=int, default=None, help="Threads per slot (default: the cores shared by the slots).")
@click.option("--n-ctx", type=int, default=None, help="Context length (default: 2048 for llama.cpp, the model's "
              "otherwise).")
@click.option("--gpu-layers", default=0, show_default=True, help="llama.cpp layers to offload to a GPU (-1: all).")
@click.option("--provider", type=click.Choice(tuple(PROVIDERS)), default="cpu", show_default=True,
              help="onnxruntime execution provider.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto",
              show_default=True, help="auto: llama.cpp for .gguf files, onnxruntime for ONNX exports, torch for "
              "Hugging Face directories.")
@click.option("--device", default="cpu", show_default=True, help="torch device (torch backend): cpu, cuda, cuda:N.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="torch dtype (torch backend).")
@click.option("--model-name", default=None, help="The model name clients send (default: the artifact's name).")
@click.option("--task", default=None, help="Also answer this task at POST /v1/task ({\"input\": text} in, the "
              "validated JSON answer out): a shipped task's name or a task .toml [default: a bundle's task.toml].")
def serve_cmd(artifact: str, host: str, port: int, api_key: str | None, slots: int, parallel: str, max_queue: int,
              max_tokens_limit: int, timeout_s: float, threads: int | None, n_ctx: int | None, gpu_layers: int,
              provider: str, device: str, dtype: str, backend: str, model_name: str | None, task: str | None) -> None:
    """Serve ARTIFACT over an OpenAI-compatible HTTP API (/v1/chat/completions with response_format,
    /v1/completions; /v1/task for a bundle or with --task)."""
    # Every option is checked here, before the model loads.
    engine = EngineOptions(threads=threads, n_ctx=n_ctx, gpu_layers=gpu_layers, provider=provider, device=device,
                           dtype=dtype)
    config = server.ServeConfig(host=host, port=port, api_key=api_key, slots=slots, parallel=parse_parallel(parallel),
                         max_queue=max_queue, max_tokens_limit=max_tokens_limit, request_timeout_s=timeout_s,
                         engine=engine, backend=backend, model_name=model_name, task=task)
    keep_torch_out(artifact, backend)  # a GGUF/ONNX server has no use for torch's ~220 MB
    quiet_transformers()
    try:
        server.serve(artifact, config, log=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it already handled gracefully
        click.echo("stopped", err=True)
