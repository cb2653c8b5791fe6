"""Inputs of a many-slide run: files, folders, globs and manifests become slides with names that cannot collide."""

from __future__ import annotations

import pytest

from cervrt.errors import InputError
from cervrt.runtime.inputs import collect_inputs, parse_shard, read_manifest, shard


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path):
    for name in ("a/case1.png", "b/case1.png", "b/deep/x.ome.tiff", "top.svs", "notes.txt", "a/readme.md"):
        _touch(tmp_path / "scans" / name)
    return tmp_path / "scans"


def test_folder_names_are_paths_below_the_folder_and_unsupported_files_are_counted(tree):
    found = collect_inputs([tree], recursive=True)
    assert [s.name for s in found.slides] == ["a/case1", "b/case1", "b/deep/x", "top"]
    assert found.unsupported == 2
    flat = collect_inputs([tree])
    assert [s.name for s in flat.slides] == ["top"] and flat.unsupported == 1


def test_same_names_collide_before_anything_runs(tree):
    with pytest.raises(InputError, match="would both write outputs named 'case1'"):
        collect_inputs([tree / "a" / "case1.png", tree / "b" / "case1.png"])
    with pytest.raises(InputError, match=r"top\.svs and .*TOP\.png would both write outputs named 'TOP'"):
        collect_inputs([tree / "top.svs", tree / "TOP.png"])  # a name is a name whatever the case


def test_globs_are_named_below_their_fixed_folder(tree):
    found = collect_inputs([str(tree / "**" / "*.png")])
    assert [s.name for s in found.slides] == ["a/case1", "b/case1"]
    with pytest.raises(InputError, match="no slides match"):
        collect_inputs([str(tree / "*.ndpi")])


def test_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no slides"):
        collect_inputs([tmp_path / "empty"])
    with pytest.raises(InputError, match="no slides given"):
        collect_inputs([])


def test_a_manifest_names_by_id_and_fails_bad_rows_alone(tree, tmp_path):
    manifest = tmp_path / "slides.csv"
    manifest.write_text("path,mpp,id\nscans/a/case1.png,0.5,patient-7\nscans/b/case1.png,,\n"
                        "scans/missing.png,,\nscans/top.svs,zero,\n")
    rows = read_manifest(manifest)
    assert [(r.name, r.mpp) for r in rows] == [("patient-7", 0.5), ("scans/b/case1", None), ("scans/missing", None),
                                                ("scans/top", None)]
    assert [bool(r.error) for r in rows] == [False, False, True, True]
    assert "does not exist" in rows[2].error and "bad mpp 'zero'" in rows[3].error
    headerless = tmp_path / "plain.csv"
    headerless.write_text(f"{tree / 'top.svs'},0.25,t1\n")
    assert [(r.name, r.mpp) for r in collect_inputs([], manifest=headerless).slides] == [("t1", 0.25)]


@pytest.mark.parametrize(("text", "fragment"), [(None, "does not exist"), ("", "has no rows"),
                                                ("path,colour\nx.png,red\n", "unknown column 'colour'"),
                                                ("path,id\nx.png,../up\n", "must be a relative name")])
def test_bad_manifests_are_one_line_errors(tmp_path, text, fragment):
    manifest = tmp_path / "m.csv"
    if text is not None:
        manifest.write_text(text)
    with pytest.raises(InputError, match=fragment):
        read_manifest(manifest)


def test_shards_split_the_list_deterministically(tree):
    slides = collect_inputs([tree], recursive=True).slides
    parts = [shard(slides, i, 3) for i in (1, 2, 3)]
    names = [s.name for part in parts for s in part]
    assert sorted(names) == sorted(s.name for s in slides) and len(set(names)) == len(names)
    assert parts == [shard(list(reversed(slides)), i, 3) for i in (1, 2, 3)]  # input order does not matter
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/2", "0/2", "1", "a/b", "1/0"):
        with pytest.raises(InputError, match="must be I/N"):
            parse_shard(bad)
