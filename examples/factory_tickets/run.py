"""The factory-tickets example end to end: data, prototype, teacher data, student, KD, RL, evaluation, export.

    python examples/factory_tickets/run.py [--work factory-tickets-run]

Every stage is one ``supertiny`` command, printed before it runs, so the run doubles as
a recipe to copy. A stage whose output is already there (its manifest verifies) is
skipped, and an interrupted training stage resumes from its last checkpoint: rerunning
the script after a crash or Ctrl-C picks up where it stopped. The wall time of every
stage and the test scores go to ``WORK/run.json``.

1. **prototype**: the default teacher (SmolLM2-135M-Instruct) fine-tuned (SFT) on the
   labelled train split: the *domain teacher* (the paper's prototype, in miniature);
2. **export**: the domain teacher as a Q8_0 GGUF, the fast engine for generating data;
3. **teach**: the domain teacher answers the train prompts (K samples each), answers
   checked against the labels (rejection sampling): the teacher data;
4. **student**: the domain teacher depth-pruned to ``--layers`` of its 30 layers;
5. **kd**: logit distillation (forward KL on the teacher's cached top-k, mixed with the
   cross-entropy on the teacher's answers);
6. **rl**: GRPO-style RL on the task reward with a KL penalty toward the teacher, on the
   ``rl`` split (400 labelled tickets the student has not seen: after KD it solves every
   train prompt, which leaves RL nothing to learn from); groups whose answers all scored
   the same are replaced by fresh prompts (dynamic sampling);
7. **eval**: task score on the test split for the domain teacher and each student;
8. **deploy**: the final student exported as a Q8_0 GGUF (parity-checked).

Defaults are sized for about an hour on 2 CPU cores (see the README's table). The same
functions run the benchmark ``benchmarks/knowledge_transfer.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supertiny.manifest import manifest_path, read_manifest

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TASK = "factory-tickets"


@dataclass
class Settings:
    """The run's knobs (command-line options of the same names)."""

    work: Path = Path("factory-tickets-run")
    layers: int = 16  # student depth (of the teacher's 30)
    prototype_epochs: float = 1.0  # the train split: 2200 tickets
    samples: int = 2  # teacher answers per prompt
    kd_epochs: float = 1.0
    kd_loss: str = "fkl"
    rl_steps: int = 20
    rl_group: int = 4
    rl_resample: int = 3  # dynamic sampling: most train prompts are solved after KD
    eval_limit: int | None = None  # test records scored (None: all 200)
    threads: int = 2


def supertiny(*args: Any) -> list[str]:
    """The command line of one supertiny command (the interpreter running this script)."""
    return [sys.executable, "-m", "supertiny", *map(str, args)]


def done(path: Path) -> bool:
    """Whether a stage's output is complete: it exists and its manifest verifies."""
    if not path.exists():
        return False
    r = subprocess.run(supertiny("verify", path), capture_output=True, text=True)
    return r.returncode == 0


def run_stage(name: str, out: Path, argv: list[str], times: dict[str, float], log: Path) -> None:
    """Run one stage's command unless its output is already complete; time it into ``times``."""
    if done(out):
        # the time it took when it ran, from its manifest (the stage's own steps, without start-up)
        times[name] = round(sum(read_manifest(out).seconds.values()), 1)
        print(f"[{name}] {out} is complete: skipped (took {times[name]:.0f} s)", flush=True)
        return
    shown = " ".join(["supertiny", *argv[3:]])
    print(f"\n[{name}] $ {shown}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(argv)
    times[name] = round(time.perf_counter() - t0, 1)
    with log.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"stage": name, "command": shown, "seconds": times[name], "rc": r.returncode}) + "\n")
    if r.returncode != 0:
        raise SystemExit(f"[{name}] failed (exit {r.returncode}); fix the cause and rerun: finished stages are kept")
    print(f"[{name}] {times[name]:.0f} s", flush=True)


def resume_flag(out: Path) -> list[str]:
    """``--resume`` when an interrupted training run left checkpoints in OUT.work/."""
    return ["--resume"] if Path(f"{out}.work").is_dir() else []


def paths(s: Settings) -> dict[str, Path]:
    w = s.work
    return {"domain": w / "domain-teacher", "domain_gguf": w / "domain-teacher.q8_0.gguf",
            "teacher_data": w / "teacher-data.jsonl", "student": w / f"student-{s.layers}l",
            "kd": w / f"student-{s.layers}l-kd", "rl": w / f"student-{s.layers}l-kd-rl",
            "deploy": w / f"student-{s.layers}l-kd-rl.q8_0.gguf", "log": w / "commands.jsonl",
            "summary": w / "run.json"}


def prototype(s: Settings, times: dict[str, float]) -> None:
    p = paths(s)
    run_stage("prototype", p["domain"], supertiny(
        "distill", "default", "--task", TASK, "--data", DATA / "train.jsonl", "--out", p["domain"], "--loss", "sft",
        "--epochs", s.prototype_epochs, "--lr", "2e-4", "--batch-size", 8, "--bf16", "--dev", DATA / "dev.jsonl",
        "--dev-limit", 20, *resume_flag(p["domain"])), times, p["log"])
    run_stage("export", p["domain_gguf"], supertiny(
        "export", "gguf", p["domain"], p["domain_gguf"], "--quant", "Q8_0"), times, p["log"])


def teach(s: Settings, times: dict[str, float]) -> None:
    p = paths(s)
    # one engine per core: llama.cpp decodes a 135M model faster as two single-thread workers
    run_stage("teach", p["teacher_data"], supertiny(
        "teach", p["domain_gguf"], "--task", TASK, "--prompts", DATA / "train.jsonl", "--out", p["teacher_data"],
        "--samples", s.samples, "--stop-when-perfect", "--concurrency", s.threads, "--threads", 1,
        "--max-new-tokens", 64), times, p["log"])


def student(s: Settings, times: dict[str, float], out: Path | None = None, width: dict[str, str] | None = None,
            name: str = "student") -> Path:
    """The pruned student: ``--layers`` deep, or (``width``) the prune options of a width-pruned one."""
    p = paths(s)
    out = out or p["student"]
    shape = [a for k, v in (width or {}).items() for a in (f"--{k}", v)] or ["--layers", s.layers]
    run_stage(name, out, supertiny("prune", p["domain"], out, *shape, "--calib", p["teacher_data"]), times, p["log"])
    return out


def kd(s: Settings, times: dict[str, float], start: Path | None = None, out: Path | None = None,
       loss: str | None = None, name: str = "kd") -> Path:
    p = paths(s)
    start, out, loss = start or p["student"], out or p["kd"], loss or s.kd_loss
    run_stage(name, out, supertiny(
        "distill", start, "--task", TASK, "--data", p["teacher_data"], "--out", out, "--teacher", p["domain"],
        "--loss", loss, "--epochs", s.kd_epochs, "--lr", "3e-4", "--batch-size", 8, "--bf16",
        "--cache-dir", s.work / "kd-cache", "--dev", DATA / "dev.jsonl", "--dev-limit", 20, *resume_flag(out)),
        times, p["log"])
    return out


def rl(s: Settings, times: dict[str, float]) -> None:
    p = paths(s)
    run_stage("rl", p["rl"], supertiny(
        "rl", p["kd"], "--task", TASK, "--data", DATA / "rl.jsonl", "--out", p["rl"], "--teacher", p["domain"],
        "--steps", s.rl_steps, "--group", s.rl_group, "--batch-prompts", 2, "--resample", s.rl_resample,
        "--lr", "1e-5", "--kl-coef", "0.05",
        "--max-new-tokens", 48, "--bf16", "--save-every", 5, "--dev", DATA / "dev.jsonl", "--dev-limit", 20,
        *resume_flag(p["rl"])), times, p["log"])


def _identity(model: Path | str) -> str:
    """What identifies a model's weights for the evaluation cache: its manifest, else its files' sizes."""
    p = Path(model)
    if manifest_path(p).is_file():
        return hashlib.sha256(manifest_path(p).read_bytes()).hexdigest()
    return str(model) if not p.exists() else json.dumps(sorted((q.name, q.stat().st_size) for q in
                                                               (p.iterdir() if p.is_dir() else [p])))


def eval_json(s: Settings, label: str, argv: list[str], model: Path | str) -> tuple[dict[str, Any], bool]:
    """The JSON report of a ``supertiny eval ... --json`` command line, and whether it was kept from an earlier
    run: reports live in ``WORK/evals/LABEL-KEY.json``, keyed by the command and the model's manifest."""
    key = hashlib.sha256(json.dumps([argv[3:], _identity(model)], default=str).encode()).hexdigest()[:16]
    cache = s.work / "evals" / f"{label}-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8")), True
    print(f"[eval] $ {' '.join(['supertiny', *argv[3:]])}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"[eval] {model} failed (exit {r.returncode})")
    report = {**json.loads(r.stdout), "wall_s": round(time.perf_counter() - t0, 1)}
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps(report), encoding="utf-8")
    return report, False


def evaluate(s: Settings, model: Path | str, data: Path | None = None, limit: int | None = -1) -> dict[str, Any]:
    """``supertiny eval MODEL --task factory-tickets --data test.jsonl --json`` (the model's own prompt);
    ``limit`` -1: the run's ``eval_limit``. Reports are reused while the model's manifest is unchanged."""
    limit = s.eval_limit if limit == -1 else limit
    data = data or DATA / "test.jsonl"
    argv = supertiny("eval", model, "--task", TASK, "--data", data, "--max-new-tokens", 64,
                     "--threads", s.threads, "--json", *(["--limit", limit] if limit else []))
    report, kept = eval_json(s, f"{Path(str(model)).name}-{Path(data).stem}", argv, model)
    print(f"[eval] {model}: task score {report['task_score']:.3f} "
          f"({'kept from an earlier run' if kept else str(round(report['wall_s'])) + ' s'})", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = Settings()
    for key, value in asdict(d).items():
        kind = type(value) if value is not None else int
        ap.add_argument(f"--{key.replace('_', '-')}", type=Path if key == "work" else kind, default=value)
    s = Settings(**vars(ap.parse_args(argv)))
    s.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p, times = paths(s), {}
    t0 = time.perf_counter()
    prototype(s, times)
    teach(s, times)
    student(s, times)
    kd(s, times)
    rl(s, times)
    scores = {key: evaluate(s, p[key]) for key in ("domain", "kd", "rl")}
    times["eval"] = round(sum(r.get("wall_s", 0.0) for r in scores.values()), 1)  # a kept report: its own run
    run_stage("deploy", p["deploy"], supertiny("export", "gguf", p["rl"], p["deploy"], "--quant", "Q8_0"),
              times, p["log"])
    total = round(time.perf_counter() - t0, 1)
    summary = {"settings": {k: str(v) for k, v in asdict(s).items()}, "seconds": times, "total_s": total,
               "test": {k: {"task_score": v["task_score"], "fields": v["fields"]} for k, v in scores.items()}}
    p["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    teacher_score = scores["domain"]["task_score"]
    print(f"\n{'stage':<10} {'seconds':>8}")
    for k, v in times.items():
        print(f"{k:<10} {v:>8.0f}")
    print(f"{'in all':<10} {sum(times.values()):>8.0f}   (a skipped stage: the seconds of its earlier run)")
    print(f"{'this run':<10} {total:>8.0f}\n")
    for k, v in scores.items():
        ratio = v["task_score"] / teacher_score if teacher_score else float("nan")
        print(f"test task score {k:<7} {v['task_score']:.3f}  ({ratio:.1%} of the domain teacher)")
    print(f"\ndeployable student: {p['deploy']} (HF: {p['rl']}); summary: {p['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
