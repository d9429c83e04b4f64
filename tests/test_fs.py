"""The filesystem mechanisms every command goes through (hegl_cli.fs): the output writer, locks, the
one reader for tables/lists/JSON, and the bounded YAML loader."""

from __future__ import annotations

import gzip
import json
import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import rename_no_replace
from hegl_cli.fs.locks import FolderLock
from hegl_cli.fs.outputs import RECORD, OutputFolder, safe_name, unique_names
from hegl_cli.fs.tables import read_json, read_lines, read_table
from hegl_cli.fs.yamlfile import load_yaml, read_yaml


# --- names derived from inputs ----------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_a_safe_name_is_one_harmless_path_component(text):
    name = safe_name(text, fallback="image")
    assert name and name not in (".", "..") and not name.startswith((".", "-", " "))
    assert "/" not in name and "\\" not in name and all(ch.isprintable() for ch in name)
    assert len(name.encode("utf-8")) <= 120
    assert Path(name).name == name and len(Path(name).parts) == 1


@pytest.mark.parametrize("stem,expected", [("..", "image"), ("...", "image"), (".", "image"), ("a/b", "a_b"),
                                           ("a\nb", "a_b"), ("-h", "_h"), ("  x  ", "x"), ("x" * 300, "x" * 120)])
def test_safe_name_hand_cases(stem, expected):
    assert safe_name(stem, fallback="image") == expected


def test_unique_names_ignore_case_like_the_file_systems_that_do():
    assert unique_names(["a", "A", "b", "a"]) == ["a", "A-2", "b", "a-3"]


# --- the output writer -----------------------------------------------------------------------------
def test_a_file_hegl_did_not_write_is_never_replaced_and_its_own_only_with_force(tmp_path):
    out = OutputFolder(tmp_path / "figs")
    out.write_text("grid.png", "ours")
    assert json.loads((tmp_path / "figs" / RECORD).read_text().splitlines()[0])["path"] == "grid.png"
    with pytest.raises(UserError, match="pass --force"):
        OutputFolder(tmp_path / "figs").write_text("grid.png", "again")
    OutputFolder(tmp_path / "figs", force=True).write_text("grid.png", "again")
    assert (tmp_path / "figs" / "grid.png").read_text() == "again"
    (tmp_path / "figs" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a file hegl wrote"):
        OutputFolder(tmp_path / "figs", force=True).write_text("notes.txt", "x")
    (tmp_path / "figs" / "grid.png").write_text("edited by the user")  # hegl's once, the user's now
    with pytest.raises(UserError, match="or it changed since"):
        OutputFolder(tmp_path / "figs", force=True).write_text("grid.png", "x")
    assert (tmp_path / "figs" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "figs" / "grid.png").read_text() == "edited by the user"


def test_the_writer_never_leaves_its_folder(tmp_path):
    out = OutputFolder(tmp_path / "o")
    for bad in ("../x", "/etc/x", "a/../../x", ".", ""):
        with pytest.raises(UserError):
            out.write_text(bad, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "target").mkdir()
    (tmp_path / "o2").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "o2" / "sub")
    with pytest.raises(UserError, match="in the way"):
        OutputFolder(tmp_path / "o2").write_text("sub/x.txt", "x")
    assert not list((tmp_path / "target").iterdir())


def test_a_file_that_appears_while_hegl_writes_is_kept(tmp_path, monkeypatch):
    import hegl_cli.fs.atomic as atomic

    out = OutputFolder(tmp_path)
    real = atomic.rename_no_replace

    def user_was_faster(src, dst):
        Path(dst).write_text("the user's")
        return real(src, dst)

    monkeypatch.setattr(atomic, "rename_no_replace", user_was_faster)
    with pytest.raises(UserError, match="appeared while hegl was writing it"):
        out.write_text("grid.png", "ours")
    assert (tmp_path / "grid.png").read_text() == "the user's"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_rename_no_replace_refuses_an_empty_folder_and_a_file(tmp_path):
    (tmp_path / "src").mkdir()
    for existing in ("empty", "file"):
        target = tmp_path / existing
        target.mkdir() if existing == "empty" else target.write_text("x")
        with pytest.raises(FileExistsError):
            rename_no_replace(tmp_path / "src", target)
    rename_no_replace(tmp_path / "src", tmp_path / "new")
    assert (tmp_path / "new").is_dir() and not (tmp_path / "src").exists()


# --- locks -----------------------------------------------------------------------------------------
def test_readers_share_a_lock_and_a_writer_waits_for_none_of_them(tmp_path):
    lock = tmp_path / ".hegl-lock"
    reader = FolderLock(lock, "run folder R", shared=True).acquire()
    again = FolderLock(lock, "run folder R", shared=True).acquire()  # a second reader in this process
    with pytest.raises(UserError, match="run folder R is in use by pid"):
        FolderLock(lock, "run folder R").acquire()
    reader.release()
    with pytest.raises(UserError, match="is in use"):
        FolderLock(lock, "run folder R").acquire()  # the second reader still reads
    again.release()
    writer = FolderLock(lock, "run folder R").acquire()
    with pytest.raises(UserError, match="wait for it to finish"):
        FolderLock(lock, "run folder R", shared=True).acquire()
    writer.release()
    assert lock.is_file()  # never deleted


@pytest.mark.parametrize("shared", [False, True])
def test_a_lock_never_writes_through_a_link_or_over_a_users_file(tmp_path, shared):
    """A symbolic link or a file of the user's where hegl keeps a lock: refused, its bytes kept."""
    victim = tmp_path / "victim.txt"
    victim.write_text("my notes")
    link = tmp_path / ".syn.lock"
    link.symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        FolderLock(link, "prepared cache syn", shared=shared).acquire()
    link.unlink()
    link.write_text("notes of mine")
    with pytest.raises(UserError, match="not a hegl lock file"):
        FolderLock(link, "prepared cache syn", shared=shared).acquire()
    assert victim.read_text() == "my notes" and link.read_text() == "notes of mine"
    link.write_text("")  # an empty file holds nothing to lose: hegl may use it
    FolderLock(link, "prepared cache syn", shared=shared).acquire().release()
    FolderLock(link, "prepared cache syn", shared=shared).acquire().release()  # and its own file again


def test_a_reader_leaves_no_lock_file_beside_a_folder_that_is_not_a_cache(tmp_path):
    from hegl_cli.data.cache import cache_lock

    (tmp_path / "userdir").mkdir()
    with pytest.raises(UserError, match="no prepared dataset at"):
        cache_lock(tmp_path / "userdir", shared=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["userdir"]


def test_a_reader_of_a_read_only_folder_needs_no_lock_file(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        FolderLock(folder / ".hegl-lock", "x", shared=True).acquire().release()
    finally:
        folder.chmod(0o755)


# --- the one reader for tables, lists and JSON -------------------------------------------------------
def test_tables_from_excel_and_windows_read_like_any_other(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\na.png,1\nb.png,0\n")
    excel = tmp_path / "excel.csv"
    excel.write_bytes(b"\xef\xbb\xbfpath,label\r\na.png,1\r\nb.png,0\r\n")
    zipped = tmp_path / "t.csv.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    tabs = tmp_path / "t.tsv"
    tabs.write_text("path\tlabel\na.png\t1\nb.png\t0\n")
    expected = [{"path": "a.png", "label": "1"}, {"path": "b.png", "label": "0"}]
    for path in (plain, excel, zipped, tabs):
        assert read_table(path, required={"path"}).dicts() == expected, path
    short = tmp_path / "short.csv"
    short.write_text("path,label,site\na.png\n")
    assert read_table(short).dicts() == [{"path": "a.png", "label": "", "site": ""}]
    assert read_table(short).lines == [2]


@pytest.mark.parametrize("content,message", [
    (b"\x89PNG\r\n\x1a\n\0\0\0", "a binary file"),
    (b"path\nb\xe9.png\n", "not UTF-8 text (byte 0xe9 on line 2)"),
    (b"", "empty table"),
    (b"path,path\na,b\n", "names column 'path' twice"),
    (b"file,label\na,1\n", "expected the columns"),
    (b'path\n"' + b"a" * (2 << 20) + b'"\n', "not a readable table"),
])
def test_a_table_that_cannot_be_read_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "t.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        read_table(path, required={"path"})
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_folder_is_not_a_table_list_or_json(tmp_path):
    for reader in (read_table, read_lines, read_json):
        with pytest.raises(UserError, match="is a folder"):
            reader(tmp_path)


def test_json_reader_names_the_file_and_what_it_should_be(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"a": ')
    with pytest.raises(UserError, match="not valid JSON, a corrupt manifest"):
        read_json(path, "manifest")
    assert read_json(tmp_path / "none.json", missing_ok=True) is None
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}')
    assert read_json(path) == {"a": 1}


# --- the bounded YAML loader -------------------------------------------------------------------------
def billion_laughs(levels: int, width: int = 9) -> str:
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_refused_at_once(levels, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs(levels))
    start = time.perf_counter()
    with pytest.raises(UserError, match="expands to more than"):
        read_yaml(path)
    assert time.perf_counter() - start < 2.0  # not a benchmark: a hang would be minutes


def test_a_50_mb_yaml_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "w") as handle:
        handle.write("train:\n  epochs: 3\n")
        handle.write(("# " + "x" * 1022 + "\n") * (50 * 1024))
    start = time.perf_counter()
    with pytest.raises(UserError, match="MB of YAML"):
        read_yaml(path)
    assert time.perf_counter() - start < 2.0


def test_yaml_that_is_fine_keeps_its_aliases_and_deep_nesting_is_refused():
    assert load_yaml("a: &x [1, 2]\nb: *x\n", "c.yaml") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(UserError, match="nested more than"):
        load_yaml("a: " + "[" * 200 + "]" * 200 + "\n", "c.yaml")
    with pytest.raises(UserError, match="refers to itself"):
        load_yaml("a: &a [1, *a]\n", "c.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml("a: [", "c.yaml")
