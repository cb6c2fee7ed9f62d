"""The stage manifest: its schema, hashes, `supertiny verify`, staging that never lingers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from supertiny.cli import main
from supertiny.manifest import (
    Manifest,
    ManifestError,
    StageRun,
    hash_path,
    manifest_path,
    read_manifest,
    verify_artifact,
)
from supertiny.outdir import remove_stale_staging
from supertiny.stages.export import gguf as gguf_export
from supertiny.stages.export.gguf import GGUFExportConfig, export_gguf


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def dead_pid():
    """A PID that just exited (and is not reused within the test: PIDs cycle through ~4M)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".partial"))


EXAMPLE = Manifest(
    stage="export-gguf", stage_version=1, created="2026-12-01T20:00:00Z",
    source={"path": "/models/src", "sha256": "ab" * 32, "info": {"parameters": 10, "architecture": "llama"}},
    settings={"dtype": "f16", "quant": None}, files={"m.gguf": {"bytes": 3, "sha256": "cd" * 32}},
    quality={"passed": True, "kl_mean": 1e-6}, details={"tensor_types": {"F16": 2}},
    seconds={"write": 0.5}, notes=["a note"],
)


def test_manifest_round_trip_and_unknown_keys(tmp_path):
    data = json.loads(json.dumps(EXAMPLE.to_dict()))
    assert list(data)[0] == "schema" and data["schema"] == 1
    assert Manifest.from_dict(data) == EXAMPLE and EXAMPLE.bytes == 3
    f = tmp_path / "m.gguf.supertiny.json"
    with pytest.raises(ManifestError, match=r"m\.gguf\.supertiny\.json: unknown key\(s\) artifact"):
        Manifest.from_dict({**data, "artifact": {}}, f)
    with pytest.raises(ManifestError, match="unknown manifest schema 2"):
        Manifest.from_dict({**data, "schema": 2}, f)
    with pytest.raises(ManifestError, match="unknown manifest schema None"):  # an older report
        Manifest.from_dict({k: v for k, v in data.items() if k != "schema"}, f)
    with pytest.raises(ManifestError, match="missing key.*files"):
        Manifest.from_dict({k: v for k, v in data.items() if k != "files"}, f)
    with pytest.raises(ManifestError, match="notes must be a JSON array"):
        Manifest.from_dict({**data, "notes": "x"}, f)
    with pytest.raises(ManifestError, match=r"files\['m.gguf'\]"):
        Manifest.from_dict({**data, "files": {"m.gguf": {"bytes": 3}}}, f)
    (tmp_path / "m.gguf").write_bytes(b"abc")
    assert manifest_path(tmp_path / "m.gguf") == f and manifest_path(tmp_path) == tmp_path / "supertiny.json"
    assert read_manifest(tmp_path / "m.gguf") is None
    f.write_text("{not json")
    with pytest.raises(ManifestError, match=r"m\.gguf\.supertiny\.json: unreadable manifest"):
        read_manifest(tmp_path / "m.gguf")


def test_hash_path_of_a_file_and_a_directory(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "x.bin").write_bytes(b"\x00\x01")
    (a / "sub" / "y.txt").write_text("y")
    assert hash_path(a / "x.bin") == hashlib.sha256(b"\x00\x01").hexdigest()
    digest = hash_path(a)
    lines = "".join(f"{n}\0{hashlib.sha256(d).hexdigest()}\n" for n, d in [("sub/y.txt", b"y"), ("x.bin", b"\0\1")])
    assert digest == hashlib.sha256(lines.encode()).hexdigest()
    (a / "supertiny.json").write_text("{}")  # the manifest is not content
    assert hash_path(a) == digest
    (a / "sub" / "y.txt").rename(a / "sub" / "z.txt")  # names count
    assert hash_path(a) != digest


def test_verify_catches_a_modified_byte_in_a_gguf_export(make_tiny_dir, tmp_path):
    out = tmp_path / "m.gguf"
    printed = run("export", "gguf", make_tiny_dir(), out, "--dtype", "f32", "--no-verify", "--json")
    assert printed.exit_code == 0, printed.output
    manifest = read_manifest(out)
    assert json.loads(printed.output[printed.output.index("{"):]) == manifest.to_dict()  # --json: the manifest
    assert manifest.stage == "export-gguf" and set(manifest.files) == {"m.gguf"}
    assert {"load", "write", "hash"} <= set(manifest.seconds)
    ok = run("verify", out)
    assert ok.exit_code == 0 and ok.output.startswith("OK ") and "1 file" in ok.output, ok.output
    assert run("verify", manifest_path(out)).exit_code == 0  # the manifest names its artifact
    flip_byte(out)
    bad = run("verify", out)
    assert bad.exit_code == 1 and bad.output.strip() == f"FAILED {out}: modified: m.gguf", bad.output
    assert verify_artifact(out).mismatched == ["m.gguf"]
    out.unlink()
    gone = run("verify", manifest_path(out))
    assert gone.exit_code == 1 and "missing: m.gguf" in gone.output


def test_verify_catches_a_modified_byte_in_an_onnx_export(make_tiny_dir, tmp_path):
    pytest.importorskip("optimum")
    from supertiny.stages.export.onnx import OnnxExportConfig, export_onnx

    out = tmp_path / "onnx"
    export_onnx(make_tiny_dir(), out, OnnxExportConfig(verify=False))
    assert run("verify", out).exit_code == 0
    flip_byte(out / "model.onnx")
    bad = run("verify", out)
    assert bad.exit_code == 1 and "modified: model.onnx" in bad.output and "\n" not in bad.output.strip()
    (out / "tokenizer.json").unlink()
    (out / "extra.txt").write_text("not from the stage")
    result = json.loads(run("verify", out, "--json").output)
    assert result["ok"] is False and result["mismatched"] == ["model.onnx"]
    assert result["missing"] == ["tokenizer.json"] and result["unlisted"] == ["extra.txt"]


def test_verify_without_a_manifest_is_a_one_line_error(make_tiny_dir, tmp_path):
    for path in (make_tiny_dir(), tmp_path / "nothing-here"):
        result = run("verify", path)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "has no manifest" in run("verify", make_tiny_dir(name="other")).output


def test_inspect_adds_the_manifest_and_keeps_its_lines(make_tiny_dir, tmp_path):
    out, src = tmp_path / "m.gguf", make_tiny_dir()
    export_gguf(src, out, GGUFExportConfig(dtype="f32", verify=False))
    with_manifest = run("inspect", out)
    data = json.loads(run("inspect", out, "--json").output)
    assert data["manifest"]["stage"] == "export-gguf" and data["format"] == "gguf"
    sidecar = manifest_path(out)
    sidecar.rename(tmp_path / "aside.json")
    plain = run("inspect", out)
    assert "manifest" not in json.loads(run("inspect", out, "--json").output)
    assert with_manifest.output.startswith(plain.output)
    extra = with_manifest.output[len(plain.output):].splitlines()
    assert [ln.split()[0] for ln in extra] == ["manifest", "made_from", "files"]
    assert "export-gguf v1" in extra[0] and str(src) in extra[1]


def test_stale_staging_of_dead_processes_is_removed(tmp_path):
    out = tmp_path / "m.gguf"
    dead, live = dead_pid(), os.getppid()
    stale = [tmp_path / f".m.gguf.{dead}.0.partial", tmp_path / f".m.gguf.{dead}.raw.partial"]
    kept = [tmp_path / f".m.gguf.{live}.raw.partial", tmp_path / f".other.gguf.{dead}.raw.partial"]
    for p in stale + kept:
        p.write_bytes(b"partial")
    folder = tmp_path / "o"
    stale_dirs = [tmp_path / f".o.partial-{dead}", tmp_path / f".o.partial-{dead}-hf"]
    kept_dirs = [tmp_path / f".o.partial-{live}", tmp_path / f".o.old-{dead}"]  # out missing: the only copy
    for d in stale_dirs + kept_dirs:
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "w.bin").write_bytes(b"w")
    assert sorted(remove_stale_staging(out)) == sorted(stale)
    assert sorted(remove_stale_staging(folder)) == sorted(stale_dirs)
    assert all(p.exists() for p in kept + kept_dirs) and not any(p.exists() for p in stale + stale_dirs)
    folder.mkdir()  # with the output in place, an old copy of a dead process goes too
    assert remove_stale_staging(folder) == [tmp_path / f".o.old-{dead}"]


def test_the_next_export_removes_a_killed_exports_files(make_tiny_dir, tmp_path):
    out = tmp_path / "m.gguf"
    stale = tmp_path / f".m.gguf.{dead_pid()}.1.partial"
    stale.write_bytes(b"\0" * 1000)  # what kill -9 during the write leaves
    export_gguf(make_tiny_dir(), out, GGUFExportConfig(dtype="f32", verify=False))
    assert leftovers(tmp_path) == [] and out.is_file()


def test_a_failing_export_leaves_nothing_behind(make_tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "m.gguf"

    def broken(path, quant):
        assert path.is_file() and path.name.endswith(".partial")  # written, not yet installed
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(gguf_export, "quant_summary", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_gguf(make_tiny_dir(), out, GGUFExportConfig(dtype="f32", verify=False))
    assert leftovers(tmp_path) == [] and not out.exists() and not manifest_path(out).exists()


def test_a_failing_directory_stage_leaves_nothing_behind(make_tiny_dir, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError), StageRun("test", 1, out, source=make_tiny_dir(), info={}, settings={}) as r:
        r.dir.mkdir()
        (r.dir / "half.bin").write_bytes(b"half")
        raise RuntimeError("killed")
    assert leftovers(tmp_path) == [] and not out.exists()
    with StageRun("test", 1, out, source=make_tiny_dir(), info={}, settings={"k": 1}) as r:
        with r.step("write"):
            r.dir.mkdir()
            (r.dir / "w.bin").write_bytes(b"w")
        r.note("written")
        m = r.install(quality={"q": 1})
    assert read_manifest(out) == m and m.files == {"w.bin": {"bytes": 1, "sha256": hashlib.sha256(b"w").hexdigest()}}
    assert m.notes == ["written"] and set(m.seconds) == {"write", "hash"} and verify_artifact(out).ok
    assert leftovers(tmp_path) == []
