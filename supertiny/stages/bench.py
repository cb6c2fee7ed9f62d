"""The bench stage: an artifact measured on this machine (:mod:`supertiny.runtime.bench`) and judged against a
target's budgets, the report written as JSON with its manifest.

The report is what ``supertiny bench ARTIFACT --json`` prints: the config as run, the target,
one result (load time, TTFT and decode speed per prompt length, latency under concurrency,
peak memory, the budget verdicts) and ``passed``. A missed budget is a measurement, not a
failure: the stage writes its report either way (the command then exits 1).

Example::

    bench_to("student-q4.gguf", "bench.json", BenchConfig(prompt_lengths=(256,)), target="factory-pc")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from supertiny.manifest import Manifest
from supertiny.outdir import check_output_file
from supertiny.runtime.bench.measure import BenchConfig, bench
from supertiny.stages.registry import Input, Log, Progress, get, stage
from supertiny.stages.runs import model_run, settings
from supertiny.targets import load_target

STAGE, STAGE_VERSION = "bench", 1
INPUTS = (Input("artifact", "A .gguf file, an ONNX export, a Hugging Face directory or a bundle.", kind="model",
                argument=True),
          Input("target", "Target profile (name or .toml file) whose budgets give the verdict.", kind="target",
                required=False))


@stage(STAGE, version=STAGE_VERSION, config=BenchConfig, inputs=INPUTS, output="file", command=("bench",),
       out_option="--out", ok_codes=(0, 1))
def run(inputs: dict[str, str | None], out: Path, config: BenchConfig, log: Log, progress: Progress | None
        ) -> Manifest:
    """Benchmark ``inputs["artifact"]`` (in a child process) and write the report to ``out``."""

    artifact = inputs["artifact"]
    assert artifact is not None
    check_output_file(out)
    profile = load_target(inputs["target"]) if inputs["target"] else None

    def step(_artifact: str, what: str, done: int, total: int) -> None:
        log(f"bench: [{done}/{total}] {what}")
        if progress:
            progress(done, total)

    report = bench([artifact], config, profile, step)
    return write_report(report, out, artifact, config, inputs["target"])


def write_report(report: dict[str, Any], out: str | os.PathLike[str], artifact: str, config: BenchConfig,
                 target: str | None) -> Manifest:
    """Install ``report`` as the JSON file ``out`` with its manifest (the figures the budgets read in ``quality``)."""
    result = report["results"][0]
    with model_run(STAGE, STAGE_VERSION, Path(out), artifact, settings(config, target=target), single_file=True) as run:
        staged = run.temp("report")
        staged.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        quality = {"passed": report["passed"], "verdicts": result.get("verdicts", []),
                   "peak_rss_mb": result["peak_rss_mb"], "file_size_mb": result["file_size_mb"]}
        return run.install(staged, quality=quality, details={"threads": result["threads"],
                                                             "machine": result["machine"]})


def bench_to(artifact: str | os.PathLike[str], out: str | os.PathLike[str], config: BenchConfig | None = None,
             target: str | None = None, log: Log | None = None, progress: Progress | None = None) -> Manifest:
    """Run the stage: benchmark ARTIFACT against ``target`` into the report OUT."""
    return get(STAGE).call({"artifact": artifact, "target": target}, out, config or BenchConfig(), log, progress)
