"""moesim/io.py: input files are refused cleanly before parsing; outputs are written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moesim import io
from moesim.errors import InputError


def test_a_folder_a_fifo_and_a_missing_file_are_named_errors(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        io.read_text(tmp_path)
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):  # reading it would block forever
        io.read_toml(fifo)
    with pytest.raises(InputError, match="file not found"):
        io.read_json(tmp_path / "nope.json")


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_FILE_BYTES", 100)
    p = tmp_path / "big.toml"
    p.write_text("a = 1\n" * 50)
    with pytest.raises(InputError, match="limited to 100 bytes"):
        io.read_toml(p)


@pytest.mark.parametrize("data,hint", [
    ("name = 1".encode("utf-16"), "UTF-16"),
    (b"\x00\x00\xff binary", "binary"),
    (b"name = \"caf\xe9\"", "not UTF-8 text (byte 0xe9 at offset 11)"),
])
def test_text_that_is_not_utf8_names_the_file_and_the_byte(tmp_path, data, hint):
    p = tmp_path / "x.toml"
    p.write_bytes(data)
    with pytest.raises(InputError) as exc:
        io.read_toml(p)
    assert exc.value.source == str(p) and "not UTF-8 text" in exc.value.message and hint in exc.value.message


def test_a_utf8_byte_order_mark_is_dropped(tmp_path):
    p = tmp_path / "x.toml"
    p.write_bytes(b"\xef\xbb\xbfname = 1\n")
    assert io.read_toml(p) == {"name": 1}


@pytest.mark.parametrize("text", ["a = " + "[" * 10_000 + "]" * 10_000, "a = " + "{b = " * 100 + "1" + "}" * 100,
                                  "[" + ".".join(["t"] * 100) + "]\nx = 1\n", "a." * 100 + "b = 1"])
def test_toml_nested_deeper_than_the_limit_is_refused(text):
    with pytest.raises(InputError, match="nested more than 64 deep"):
        io.parse_toml(text, "f.toml")


def test_json_nested_deeper_than_the_limit_is_refused_before_parsing(monkeypatch):
    import json

    def boom(*a, **k):  # the pre-scan must refuse it before the recursive parser runs
        raise AssertionError("parsed")

    monkeypatch.setattr(json, "loads", boom)
    with pytest.raises(InputError, match="nested more than 64 deep"):
        io.parse_json("[" * 10_000 + "]" * 10_000, "f.json")


def test_brackets_inside_strings_and_comments_do_not_count_as_nesting():
    text = 'a = "[[[[[[[[" # {{{{{{{{{{\nb = \'\'\'\n[[[[[[[[[[[[\n\'\'\'\nc = [[1], [2]]\n'
    assert io.max_nesting(text, toml=True) == 2
    assert io.parse_toml(text, "f.toml")["c"] == [[1], [2]]
    assert io.max_nesting('{"a": "[[[[\\"[[[["}', toml=False) == 1


@pytest.mark.parametrize("text,needle", [("NaN", "NaN is not a JSON number"), ('{"a": Infinity}', "Infinity"),
                                         ("9" * 5000, "not valid JSON"), ("[1, 2", "not valid JSON")])
def test_json_that_python_would_accept_or_crash_on_is_an_input_error(text, needle):
    with pytest.raises(InputError, match=needle):
        io.parse_json(text, "f.json")


def test_a_toml_integer_too_long_to_convert_is_an_input_error():
    with pytest.raises(InputError, match="not valid TOML"):
        io.parse_toml("x = " + "9" * 6000, "f.toml")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "out.csv"
    p.write_text("old\n")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(InputError, match="No space left on device"):
        io.atomic_write_text(p, "new\n")
    assert p.read_text() == "old\n" and sorted(x.name for x in tmp_path.iterdir()) == ["out.csv"]


def test_an_unwritable_output_path_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a folder"):
        io.check_writable(tmp_path, "--csv")
    with pytest.raises(InputError, match="is not a folder"):
        io.check_writable(tmp_path / "file" / "out.csv", "--csv")
    with pytest.raises(InputError, match="too long"):
        io.check_writable(tmp_path / ("n" * 300 + ".csv"), "--csv")
    with pytest.raises(InputError, match="NUL"):
        io.check_writable(str(tmp_path / "a\x00b.csv"), "--csv")
    io.check_writable(tmp_path / "new" / "folder" / "out.csv", "--csv")  # created when written
    assert not (tmp_path / "new").exists()
    with pytest.raises(InputError, match="cannot write file"):
        io.atomic_write_text(tmp_path / "file" / "out.csv", "x")


def test_several_outputs_are_written_all_or_nothing(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("old\n")
    with pytest.raises(InputError, match="cannot write file"):
        io.atomic_write_many([(a, b"new\n"), (tmp_path / "new" / "b.jsonl", b"{}\n"), (Path("/proc/nope/c"), b"x")])
    assert a.read_text() == "old\n" and sorted(x.name for x in tmp_path.iterdir()) == ["a.csv"]
    io.atomic_write_many([(a, b"new\n"), (tmp_path / "new" / "b.jsonl", b"{}\n")])
    assert a.read_text() == "new\n" and (tmp_path / "new" / "b.jsonl").read_text() == "{}\n"
