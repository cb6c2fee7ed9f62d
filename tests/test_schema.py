"""The checks and file reading shared by targets, tasks (and recipes): supertiny.schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from supertiny import schema
from supertiny.errors import TaskError


def test_check_keys_collects_every_problem():
    checks = {"name": schema.NAME, "kind": schema.one_of("a", "b"), "note": schema.TEXT}
    problems: list[str] = []
    got = schema.check_keys({"name": "Bad Name", "kind": "a", "nite": 1}, checks, {"name", "kind"}, "top", problems)
    assert got == {"kind": "a"}
    assert problems == ["top: unknown key 'nite' (did you mean 'note'? known: name, kind, note)",
                        "top.name: expected a name of a-z, 0-9, '.', '_', '-' starting with a letter or digit, "
                        "got 'Bad Name'"]
    with pytest.raises(TaskError, match=r"^f\.toml: top: unknown key 'nite' .*; top\.name: expected"):
        schema.raise_problems(problems, "f.toml", TaskError)
    schema.raise_problems([], "f.toml", TaskError)  # nothing to report: no error


def test_checks_say_what_was_expected_and_what_came():
    with pytest.raises(schema.Bad, match=r"^expected 1, got 2$"):
        schema.version(1)(2)
    with pytest.raises(schema.Bad, match=r"^expected 1, got True$"):
        schema.version(1)(True)  # a TOML boolean is no integer
    assert schema.is_number(2.5) and not schema.is_number(True) and not schema.is_number(float("nan"))
    assert schema.show("x" * 100) == repr("x" * 100)[:57] + "..."


def test_read_toml_errors_name_the_file(tmp_path):
    with pytest.raises(TaskError, match=r"nope\.toml: no such file$"):
        schema.read_toml(tmp_path / "nope.toml", TaskError)
    (tmp_path / "d").mkdir()
    with pytest.raises(TaskError, match=r"d: is a directory, expected a task file$"):
        schema.read_toml(tmp_path / "d", TaskError, directory="a task file")
    with pytest.raises(TaskError, match=r"d: cannot read: Is a directory$"):
        schema.read_toml(tmp_path / "d", TaskError)
    (tmp_path / "latin.toml").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(TaskError, match=r"latin\.toml: not valid TOML: not UTF-8 \(byte 11\)$"):
        schema.read_toml(tmp_path / "latin.toml", TaskError)
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(TaskError, match=r"bad\.toml: not valid TOML: Invalid value \(at line 1, column 8\)$"):
        schema.read_toml(tmp_path / "bad.toml", TaskError)
    (tmp_path / "ok.toml").write_text('name = "x"\n')
    assert schema.read_toml(tmp_path / "ok.toml", TaskError) == {"name": "x"}


def test_names_and_paths():
    assert schema.is_path(Path("rpi5")) and schema.is_path("rpi5.toml") and schema.is_path("./rpi5")
    assert not schema.is_path("rpi5")
    schema.check_file_name(Path("d/rpi5.toml"), "rpi5", TaskError)
    with pytest.raises(TaskError, match=r"rpi5\.toml: name: expected 'rpi5' \(the file's name\), got 'pi'"):
        schema.check_file_name(Path("d/rpi5.toml"), "pi", TaskError)
