"""``supertiny run`` killed with SIGKILL in the middle of a stage, twice (distillation, then the GGUF export), and
run again: the bundle equals an uninterrupted run's.

What "equals" means here: the model file is the same byte for byte (distillation on CPU is deterministic and its
resume restores weights, optimizer, scheduler, RNG states and the data position, so the resumed student is
bit-identical), and so are the task, recipe, target and tokenizer the bundle carries, the file tables and quality
figures of the distill, quantize and export manifests, and the bundle's quality figures. What is measured on the
machine (timings, the benchmark, and the README and plot that quote it), creation times and absolute paths differ
between any two runs, killed or not, and are not compared.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supertiny.manifest import read_manifest, verify_artifact

from conftest import TINY_RECIPE, TINY_TARGET, write_color_task

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the runner's child follows it on Linux only "
                                "(a parent-death signal); elsewhere only Ctrl-C/SIGTERM stop it")

STEPS, SAVE_EVERY = 40, 4  # long enough that a kill lands between checkpoints, not after the stage
SAME = ("model.gguf", "task.toml", "recipe.toml", "target.toml", "tokenizer/tokenizer.json")


@pytest.fixture
def recipe(tmp_path, make_tiny_dir):
    write_color_task(tmp_path, records=12, dev=2)
    make_tiny_dir(tied=True, seed=1, name="teacher", num_hidden_layers=4)
    (tmp_path / "tiny-box.toml").write_text(TINY_TARGET)
    text = TINY_RECIPE.replace("steps = 2\n", f"steps = {STEPS}\nsave_every = {SAVE_EVERY}\n")
    # the student trimmed before KD (tests/test_pipeline.py runs the trim after it): the killed distill then
    # resumes KD through the teacher seen in the student's vocabulary, on length-grouped batches
    text = text.replace("[trim_vocab]\nkeep = 20\n", "[trim_vocab]\nkeep = 20\nbefore_distill = true\n")
    assert f"save_every = {SAVE_EVERY}" in text and "before_distill = true" in text
    (tmp_path / "r.toml").write_text(text)
    return tmp_path / "r.toml"


def start(recipe: Path, out: Path, log: Path) -> subprocess.Popen:
    """``supertiny run`` in a session of its own: a kill of it reaches its stage's child only through the runner."""
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "supertiny", "run", str(recipe), "--out", str(out)],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no {what} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stage_processes(out: Path) -> list[int]:
    """Live processes (not zombies) whose command line names ``out``: the runner's stage children."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(out) in cmdline and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def kill_runner(proc: subprocess.Popen, out: Path) -> None:
    """SIGKILL the runner; its stage child must end too (it would otherwise go on writing the stage's folder)."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + 10
    while stage_processes(out):
        assert time.monotonic() < end, f"the stage's process outlived the killed runner: {stage_processes(out)}"
        time.sleep(0.1)


def complete_checkpoints(work: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*") if (p / "trainer_state.json").is_file())


def untimed(metrics: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if "per_s" not in k and not k.endswith("runtime")}
            for line in metrics.read_text().splitlines()]


def test_a_run_killed_in_distill_and_in_export_reruns_to_the_uninterrupted_bundle(recipe, tmp_path):
    clean, killed, log = tmp_path / "clean", tmp_path / "killed", tmp_path / "killed.log"
    done = subprocess.run([sys.executable, "-m", "supertiny", "run", str(recipe), "--out", str(clean)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # 1. killed while distilling, after its first checkpoint and well before its last step
    proc = start(recipe, killed, log)
    wait_for("distill checkpoint", lambda: complete_checkpoints(killed / "distill.work"), proc, log)
    kill_runner(proc, killed)
    assert not (killed / "distill").exists(), ("distill/ exists: the kill came after distillation ended, or its "
                                               "process went on without the runner")
    assert complete_checkpoints(killed / "distill.work")[-1] < STEPS

    # 2. the rerun resumes distillation; killed again while the GGUF export writes its staging files
    proc = start(recipe, killed, log)
    staging = re.compile(r"^\.model\.gguf\.\d+\.[\w-]+\.partial$")

    def exporting() -> bool:
        folder = killed / "export-gguf"
        return folder.is_dir() and any(staging.match(p.name) for p in folder.iterdir())

    wait_for("GGUF export staging file", exporting, proc, log)
    kill_runner(proc, killed)
    assert not (killed / "export-gguf" / "model.gguf").exists()
    text = log.read_text()
    assert re.search(r"\[distill\] \$ supertiny distill .*--resume", text), text[-3000:]
    # the first run trained from the start; the rerun from its last complete checkpoint
    assert re.search(r"training \(fkl\) from the start", text) and re.search(r"training \(fkl\) from step \d+", text)

    # 3. the rerun finishes: distillation is done, the export starts over (its stale staging files removed)
    proc = start(recipe, killed, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "[distill] done earlier" in text and "[prune] done earlier" in text and "[trim-vocab] done earlier" in text
    assert (killed / "distill" / "vocab_map.json").is_file()  # KD trained the trimmed student
    assert not [p.name for p in (killed / "export-gguf").iterdir() if p.name.endswith(".partial")]

    a, b = read_manifest(clean / "bundle"), read_manifest(killed / "bundle")
    assert verify_artifact(killed / "bundle").ok
    for name in SAME:
        assert a.files[name]["sha256"] == b.files[name]["sha256"], name
    for stage in ("distill", "quantize", "export-gguf/model.gguf"):  # each manifest's file table and figures
        ma, mb = read_manifest(clean / stage), read_manifest(killed / stage)
        ma.files.pop("metrics.jsonl", None), mb.files.pop("metrics.jsonl", None)  # it holds tokens/s: compared below
        assert (ma.files, ma.quality) == (mb.files, mb.quality), stage
    da, db = read_manifest(clean / "distill").details, read_manifest(killed / "distill").details
    assert [da[k] for k in ("steps", "train_loss", "final")] == [db[k] for k in ("steps", "train_loss", "final")]
    # the training log, step by step (the steps redone after the kill logged once), but for its speed figures
    assert untimed(clean / "distill" / "metrics.jsonl") == untimed(killed / "distill" / "metrics.jsonl")
    a.quality.pop("seconds"), b.quality.pop("seconds")  # how long the evaluations took
    assert a.quality == b.quality


CHILD = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
PARENT = """import signal, sys
from supertiny.cli.run import _interrupt
from supertiny.flows.runner import run_child
signal.signal(signal.SIGTERM, _interrupt)  # as `supertiny run` does
# Ctrl-C's KeyboardInterrupt, as in a terminal: a process started in the background (CI) inherits SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    run_child([sys.executable, "-c", sys.argv[1], sys.argv[2]])
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT], ids=lambda s: s.name)
def test_a_stopped_runner_takes_its_stage_process_with_it(tmp_path, sig):
    """SIGTERM/SIGINT: the runner stops the child and waits for it (exit 130); SIGKILL: the kernel's parent-death
    signal ends the child."""
    marker = tmp_path / "child.pid"
    runner = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(marker)], start_new_session=True)
    end = time.monotonic() + 60
    while not (marker.is_file() and marker.read_text()):
        assert runner.poll() is None and time.monotonic() < end, "the child never started"
        time.sleep(0.02)
    child = int(marker.read_text())
    try:
        os.kill(runner.pid, sig)  # to the runner alone (its own session: a terminal's Ctrl-C would reach both)
        assert runner.wait(timeout=30) == (130 if sig != signal.SIGKILL else -signal.SIGKILL)
        end = time.monotonic() + 10
        while alive(child):
            assert time.monotonic() < end, f"the stage process {child} outlived the runner ({sig.name})"
            time.sleep(0.05)
    finally:  # nothing left sleeping after a failure
        for pid in (runner.pid, child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        runner.wait()
