"""Knowledge transfer on factory-tickets: who scores what, how fast each stage trains, depth vs width.

One run on this machine, side by side, on the test split (200 tickets):
  - task score and per-field accuracy of the raw default teacher (full prompt), the domain
    teacher (SFT on the train labels), the depth-pruned student before training, after SFT
    on the teacher's answers, after logit KD (forward KL, cached top-k), after KD + RL;
  - training tokens/s of SFT, KD and on-policy RL (from each stage's manifest) and the wall
    time of every stage;
  - depth vs width after training: a depth-pruned (``--layers``) and a width-pruned student
    of about the same parameter count, the same KD budget, their task score and perplexity
    (the bundled corpus) before and after.

The stages are those of ``examples/factory_tickets/run.py`` (same commands, same work
folder layout), so a finished example run is reused and only the extra arms are trained.
Writes ``WORK/knowledge_transfer.json`` and a bar chart ``WORK/knowledge_transfer.png``.

Run:  .venv/bin/python benchmarks/knowledge_transfer.py [--keep DIR] [--eval-limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import start

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "factory_tickets"))
import run as example  # noqa: E402  (the example's stages)

from supertiny.manifest import read_manifest  # noqa: E402  (light: no torch or transformers)

# About the depth student's parameters (16 of 30 layers: 85.0M) with all 30 layers kept:
# query heads 9 -> 6, MLP 1536 -> 896, hidden 576 -> 512 (84.2M).
WIDTH = {"heads": "6", "mlp": "896", "hidden": "512"}


def perplexity(s: example.Settings, model: Path | str) -> float:
    """Perplexity on 8,192 tokens of the bundled corpus (kept in WORK/evals/ while the model is unchanged)."""
    argv = example.supertiny("eval", model, "--no-generate", "--max-tokens", 8192, "--threads", s.threads, "--json",
                             "--backend", "torch")
    return example.eval_json(s, f"ppl-{Path(str(model)).name}", argv, model)[0]["score"]["perplexity"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--eval-limit", type=int, default=None, help="Test records scored (default: all 200).")
    ap.add_argument("--threads", type=int, default=2)
    args, work = start(ap, "supertiny-kt-", "Work folder (reused: finished stages are skipped).")
    s = example.Settings(work=work, layers=args.layers, eval_limit=args.eval_limit, threads=args.threads)
    p, times = example.paths(s), {}
    t0 = time.perf_counter()
    example.prototype(s, times)
    example.teach(s, times)
    example.student(s, times)
    example.kd(s, times)
    example.rl(s, times)
    sft = example.kd(s, times, out=work / f"student-{s.layers}l-sft", loss="sft", name="sft")
    width = example.student(s, times, out=work / "student-width", width=WIDTH, name="student-width")
    width_kd = example.kd(s, times, start=width, out=work / "student-width-kd", name="kd-width")
    arms = {"raw teacher": "default", "domain teacher": p["domain"], f"depth {s.layers}L, untrained": p["student"],
            "+ SFT on teacher data": sft, "+ KD (fkl, top-32)": p["kd"], "+ KD + RL": p["rl"],
            "width, untrained": width, "width + KD": width_kd}
    scores = {}
    for name, model in arms.items():
        if name not in scores:
            scores[name] = example.evaluate(s, model)
    handwritten = {name: example.evaluate(s, arms[name], example.DATA / "handwritten.jsonl", limit=None)
                   for name in ("domain teacher", "+ KD (fkl, top-32)", "+ KD + RL", "width + KD")}
    ppl = {name: perplexity(s, arms[name]) for name in
           ("domain teacher", f"depth {s.layers}L, untrained", "+ KD (fkl, top-32)", "width, untrained", "width + KD")}
    total = time.perf_counter() - t0

    teacher = scores["domain teacher"]["task_score"]
    fields = list(scores["domain teacher"]["fields"])
    print(f"\nfactory-tickets test split ({scores['domain teacher']['n']} tickets), {s.threads} threads, this machine")
    head = f"{'model':<26} {'params':>7} {'prompt':>6} {'task':>6} {'vs dom.':>7} {'JSON ok':>7} " + " ".join(
        f"{f[:9]:>9}" for f in fields)
    print(head)
    print("-" * len(head))
    for name, r in scores.items():
        m = r.get("model", {})
        n_params = m.get("parameters")
        print(f"{name:<26} {n_params / 1e6 if n_params else float('nan'):>6.1f}M {r['prompt']:>6} "
              f"{r['task_score']:>6.3f} {r['task_score'] / teacher if teacher else float('nan'):>7.1%} "
              f"{r['json_valid']:>7.1%} " + " ".join(f"{r['fields'][f]:>9.3f}" for f in fields))

    print("\nhand-written tickets (24, phrased unlike the generator): task score "
          + ", ".join(f"{n.strip('+ ')} {r['task_score']:.3f}" for n, r in handwritten.items()))

    print(f"\n{'training stage':<22} {'tokens/s':>9} {'answer tok/s':>12} {'steps':>6} {'wall s':>7}")
    for name, path, stage in (("SFT (teacher data)", sft, "sft"), ("KD fkl, cached top-32", p["kd"], "kd"),
                              ("RL on-policy", p["rl"], "rl"), ("prototype SFT (135M)", p["domain"], "prototype")):
        d = read_manifest(path).details
        print(f"{name:<22} {d['tokens_per_s']:>9.1f} {d['answer_tokens_per_s']:>12.1f} {d['steps']:>6} "
              f"{times.get(stage, float('nan')):>7.0f}")
    sft_tps, kd_tps = (read_manifest(x).details["tokens_per_s"] for x in (sft, p["kd"]))
    print(f"KD / SFT tokens/s: {kd_tps / sft_tps:.2f}x (target >= 0.7x)")

    print(f"\n{'depth vs width':<26} {'params':>7} {'ppl before':>10} {'ppl after':>9} {'task after':>10}")
    for label, before, after in ((f"depth {s.layers}L", f"depth {s.layers}L, untrained", "+ KD (fkl, top-32)"),
                                 ("width (h6, mlp896, d512)", "width, untrained", "width + KD")):
        n_params = scores[after]["model"].get("parameters")
        print(f"{label:<26} {n_params / 1e6:>6.1f}M {ppl[before]:>10.1f} {ppl[after]:>9.1f} "
              f"{scores[after]['task_score']:>10.3f}")
    print(f"domain teacher perplexity {ppl['domain teacher']:.1f}")

    print(f"\n{'stage':<16} {'wall s':>7}   (a stage reused from an earlier run: the seconds its manifest recorded)")
    for k, v in times.items():
        print(f"{k:<16} {v:>7.0f}")
    evals = sum(r.get("wall_s", 0) for r in [*scores.values(), *handwritten.values()])
    print(f"{'stages in all':<16} {sum(times.values()):>7.0f}\n{'evaluations':<16} {evals:>7.0f}   (their own runs)\n"
          f"{'this run':<16} {total:>7.0f}")
    best = max(("+ KD (fkl, top-32)", "+ KD + RL"), key=lambda n: scores[n]["task_score"])
    ratio = scores[best]["task_score"] / teacher
    print(f"\nbest depth-pruned student: {best.strip('+ ')} at {ratio:.1%} of the domain teacher "
          f"(target >= 95%: {'met' if ratio >= 0.95 else 'NOT met'})")

    out = {"scores": {k: {x: v[x] for x in ("task_score", "json_valid", "schema_valid", "fields", "n", "prompt",
                                           "wall_s")} | {"parameters": v["model"].get("parameters")}
                      for k, v in scores.items()},
           "handwritten": {k: v["task_score"] for k, v in handwritten.items()},
           "perplexity": ppl, "seconds": times, "total_s": round(total, 1)}
    (work / "knowledge_transfer.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    plot(scores, fields, work / "knowledge_transfer.png")
    print(f"wrote {work / 'knowledge_transfer.json'} and knowledge_transfer.png")
    return 0


def plot(scores: dict, fields: list[str], png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is missing (pip install 'supertiny[plot]')")
        return
    names = list(scores)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / (len(fields) + 1)
    for i, key in enumerate(["task_score", *fields]):
        vals = [scores[n]["task_score"] if key == "task_score" else scores[n]["fields"][key] for n in names]
        ax.bar([x + i * width for x in range(len(names))], vals, width, label=key)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy on the test split")
    ax.set_title("factory-tickets: task score and per-field accuracy")
    ax.legend(fontsize=8, ncol=5, loc="upper center")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
