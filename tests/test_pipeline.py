"""``supertiny run`` end to end on a tiny random teacher and a tiny task: stages, skipping, resuming a
stage, the bundle and ``verify`` (hashes + budget check)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.cli.run import summary_lines
from supertiny.flows.pipeline import run
from supertiny.flows.recipe import load_recipe
from supertiny.manifest import bundle_primary, read_manifest, verify_artifact
from supertiny.models import resolve
from supertiny.runtime.serving.server import served_task

from conftest import TINY_RECIPE as RECIPE
from conftest import TINY_TARGET as TARGET
from conftest import write_color_task

pytest.importorskip("llama_cpp")

@pytest.fixture
def recipe_file(tmp_path, make_tiny_dir):
    write_color_task(tmp_path, records=6, dev=2)
    teacher = make_tiny_dir(tied=True, seed=1, name="teacher", num_hidden_layers=4)
    assert teacher == tmp_path / "teacher"
    (tmp_path / "tiny-box.toml").write_text(TARGET)
    (tmp_path / "r.toml").write_text(RECIPE)
    return tmp_path / "r.toml"


def test_a_recipe_runs_to_a_verified_bundle_and_a_rerun_skips_or_resumes(recipe_file, tmp_path):
    out = tmp_path / "run"
    said: list[str] = []
    result = run(load_recipe(recipe_file), out, said.append)
    names = [r.name for r in result["stages"]]
    assert names == ["prune", "distill", "trim-vocab", "quantize", "export-gguf", "eval-teacher", "eval-student",
                     "bench", "bundle"]
    assert all(r.status == "ran" for r in result["stages"])
    assert any(line.startswith("[distill] $ supertiny distill ") for line in said)

    bundle = out / "bundle"
    m = read_manifest(bundle)
    assert m.stage == "bundle" and verify_artifact(bundle).ok
    assert {"model.gguf", "model.gguf.supertiny.json", "README.md", "summary.png", "chain.json", "recipe.toml",
            "target.toml", "bench.json", "tokenizer/tokenizer.json"} <= set(m.files)
    # the primary artifact is the export's file, byte for byte; serve/eval/bench open it through resolve()
    assert m.files["model.gguf"]["sha256"] == read_manifest(out / "export-gguf" / "model.gguf").files[
        "model.gguf"]["sha256"]
    assert bundle_primary(bundle) == bundle / "model.gguf" and resolve(bundle) == ("gguf", bundle / "model.gguf")
    # the chain: the teacher (hashed), then every stage's manifest or command, in order
    chain = json.loads((bundle / "chain.json").read_text())
    assert [c["stage"] for c in chain] == ["teacher", *names[:-1]]
    assert chain[0]["path"] == str(tmp_path / "teacher") and len(chain[0]["sha256"]) == 64
    assert chain[5]["manifest"]["stage"] == "export-gguf" and "carried" in " ".join(chain[5]["manifest"]["notes"])
    # the bundle's tokenizer is the trimmed one (the task's tokens and the 20 most frequent merges, of 400)
    trimmed = chain[3]["manifest"]["details"]["vocab"]
    assert trimmed["before"] == 400 and trimmed["after"] < 400
    bundled = json.loads((bundle / "tokenizer" / "tokenizer.json").read_text())
    assert len(bundled["model"]["vocab"]) == trimmed["after"] and chain[4]["manifest"]["source"]["path"] == \
        str(out / "trim-vocab")
    # quality and budget as the eval and bench reports gave them
    teacher_eval = json.loads((out / "eval-teacher" / "report.json").read_text())
    student_eval = json.loads((out / "eval-student" / "report.json").read_text())
    assert m.quality["teacher_task_score"] == teacher_eval["task_score"] and student_eval["n"] == 3
    assert m.quality["task_score"] == student_eval["task_score"] and m.quality["fields"] == student_eval["fields"]
    bench = json.loads((out / "bench" / "bench.json").read_text())["results"][0]
    assert m.details["budget"]["passed"] is True and m.details["budget"]["verdicts"] == bench["verdicts"]
    assert [v["status"] for v in bench["verdicts"]] == ["pass"] * 5
    recipe_back = load_recipe(bundle / "recipe.toml")
    assert recipe_back.to_dict() == load_recipe(recipe_file).to_dict()
    assert "supertiny verify ." in (bundle / "README.md").read_text()
    # the task travels with the bundle: serve answers it at /v1/task, eval reads it from there
    assert (bundle / "task.toml").read_bytes() == (tmp_path / "task.toml").read_bytes() and "task.toml" in m.files
    assert served_task(bundle, bundle_primary(bundle), None).name == "tiny-colors"
    assert student_eval["decoding"] == teacher_eval["decoding"] == "constrained"  # both measured alike

    # a rerun with nothing changed runs nothing
    again = run(load_recipe(recipe_file), out, said.append)
    assert [r.status for r in again["stages"]] == ["skipped"] * 9

    # a stage that died before installing its output (its folder is gone) reruns alone: quantizing is
    # deterministic, so the later stages see the same content and stay done
    shutil.rmtree(out / "quantize")
    third = run(load_recipe(recipe_file), out, said.append)
    assert {r.name: r.status for r in third["stages"]} == {**{n: "skipped" for n in names}, "quantize": "ran"}

    # a changed setting reruns its stage and what depends on it (and that stage starts over: --overwrite)
    fourth = run(load_recipe(recipe_file, sets=["eval.limit=2"]), out, said.append)
    assert {r.name for r in fourth["stages"] if r.status == "ran"} == {"eval-teacher", "eval-student", "bundle"}
    assert read_manifest(bundle).quality["records"] == 2


def test_the_support_emails_example_runs_end_to_end(tmp_path, make_tiny_dir):
    """examples/support_emails (a user's task: list, nullable number, nullable extractive string) through every
    stage on a tiny teacher, with a few of its hand-written records; the bundle answers it."""
    example = Path(__file__).resolve().parents[1] / "examples" / "support_emails"
    for split, n in (("train", 6), ("dev", 2), ("test", 3)):
        lines = (example / "data" / f"{split}.jsonl").read_text().splitlines()[:n]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    # the full prompt (every definition, for the teacher that was not trained on the task) is ~1,300 tokens
    # of the tiny tokenizer: a longer context than the other tests' teacher
    make_tiny_dir(tied=True, seed=1, name="teacher", num_hidden_layers=4, max_position_embeddings=2048)
    (tmp_path / "tiny-box.toml").write_text(TARGET)
    recipe = RECIPE.replace('name = "task.toml"', f'name = "{example / "task.toml"}"').replace(
        'train = "data.jsonl"', 'train = "train.jsonl"').replace('test = "data.jsonl"', 'test = "test.jsonl"')
    # a hold-out set (here two of the hand-written test emails): scored by both models beside the test split
    (tmp_path / "real.jsonl").write_text("\n".join((example / "data" / "test.jsonl").read_text().splitlines()[-2:]))
    recipe = recipe.replace('test = "test.jsonl"', 'test = "test.jsonl"\nholdout = ["real.jsonl"]')
    (tmp_path / "r.toml").write_text(recipe.replace("limit = 3\n", ""))
    result = run(load_recipe(tmp_path / "r.toml"), tmp_path / "run", lambda _: None)
    assert all(r.status == "ran" for r in result["stages"])
    assert [r.name for r in result["stages"]][-4:] == ["eval-teacher-real", "eval-student-real", "bench", "bundle"]
    bundle = tmp_path / "run" / "bundle"
    m = read_manifest(bundle)
    assert verify_artifact(bundle).ok and m.details["task"].endswith("task.toml")
    assert set(m.quality["fields"]) == {"intent", "topics", "amount", "order_id", "urgent"}
    real = json.loads((tmp_path / "run" / "eval-student-real" / "report.json").read_text())
    teacher_real = json.loads((tmp_path / "run" / "eval-teacher-real" / "report.json").read_text())
    h = m.quality["holdout"]["real"]
    assert (h["task_score"], h["teacher_task_score"], h["records"], h["fields"]) == \
        (real["task_score"], teacher_real["task_score"], 2, real["fields"])
    readme = (bundle / "README.md").read_text()
    assert "hold-out set `real`" in readme and "| field | test split: bundle | teacher | real: bundle | teacher |" \
        in readme
    assert any(line.startswith("hold-out    real: ") for line in summary_lines(result))
    assert load_recipe(bundle / "recipe.toml").holdout() == {"real": str(tmp_path / "real.jsonl")}
    report = json.loads((tmp_path / "run" / "eval-student" / "report.json").read_text())
    assert report["n"] == 3 and set(report["f1"]) == {"topics"}  # the list field's F1 is reported
    assert served_task(bundle, bundle_primary(bundle), None).name == "support-emails"


def test_verify_catches_a_modified_bundle_and_checks_the_budget(recipe_file, tmp_path):
    out = tmp_path / "run"
    run(load_recipe(recipe_file), out, lambda _: None)
    bundle = out / "bundle"
    runner = CliRunner()
    r = runner.invoke(main, ["verify", str(bundle), "--quick"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"OK {bundle}: ") and "budget tiny-box on this machine (1 threads): PASS" in r.stdout
    assert "budget check: [1/4] prompt 16, run 1/2" in r.stderr  # progress (the first run warms up)
    lines = r.stdout.splitlines()
    assert len(lines) == 7 and all(line.endswith("pass") for line in lines[2:])
    # one changed byte is caught, and then nothing is benchmarked
    readme = bundle / "README.md"
    original = readme.read_bytes()
    readme.write_bytes(original.replace(b"#", b"%", 1))
    r = runner.invoke(main, ["verify", str(bundle)])
    assert r.exit_code == 1 and r.stdout == f"FAILED {bundle}: modified: README.md\n" and "budget" not in r.stderr
    readme.write_bytes(original)

    # a target this machine cannot meet (a flag overrides the recipe's): only bench and the bundle rerun,
    # the summary says FAIL and the exit code is 1
    (tmp_path / "strict.toml").write_text(TARGET.replace("decode_tokens_per_s = 1", "decode_tokens_per_s = 1e9"))
    r = runner.invoke(main, ["run", str(recipe_file), "--out", str(out), "--target", str(tmp_path / "strict.toml")])
    assert r.exit_code == 1, r.output
    assert "[prune] done earlier" in r.stderr and "[bench] $ supertiny bench" in r.stderr
    assert "budget tiny-box on this machine (1 threads): FAIL" in r.stdout
    assert [line.split()[:2] for line in r.stdout.splitlines()[1:10]] == [
        ["prune", "skipped"], ["distill", "skipped"], ["trim-vocab", "skipped"], ["quantize", "skipped"],
        ["export-gguf", "skipped"],
        ["eval-teacher", "skipped"], ["eval-student", "skipped"], ["bench", "ran"], ["bundle", "ran"]]
    assert read_manifest(bundle).details["budget"]["passed"] is False
