"""No command writes onto what it reads (issue 26, family 1): each output a user names is refused, before any work,
when it is one of the command's inputs (a source file, a list entry, the thresholds file, a file of the run or of the
dataset) by its path, by a symlink or by a hard link, or lies inside the run directory the command reads. The
refusal is one line naming the option and the input, and the input keeps its bytes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, invoke

HOW = ["path", "symlink", "hardlink"]


def aliased(target: Path, how: str, folder: Path) -> Path:
    """``target`` itself, or a symlink or hard link to it made in ``folder``."""
    if how == "path":
        return target
    alias = folder / f"alias-{how}{target.suffix}"
    if how == "symlink":
        alias.symlink_to(target)
    else:
        alias.hardlink_to(target)
    return alias


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refused(result, option: str, target: Path, before: str) -> None:
    assert_one_line_error(result, option, target.name)
    assert digest(target) == before


@pytest.fixture
def photos(synth_data, tmp_path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in sorted((synth_data / "JPEGImages").glob("*.jpg"))[:3]:
        shutil.copy(image, folder)
    return sorted(folder.iterdir())


def _video(synth_data, tmp_path, photos):
    clip = tmp_path / "clip.mp4"
    shutil.copy(synth_data / "video.mp4", clip)
    return str(clip), [], clip


def _folder_image(synth_data, tmp_path, photos):
    return str(photos[0].parent), [], photos[1]


def _list_entry(synth_data, tmp_path, photos):
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"photos/{photo.name}\n" for photo in photos))
    return str(listing), [], photos[2]


def _list_file(synth_data, tmp_path, photos):
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{photo}\n" for photo in photos))
    return str(listing), [], listing


def _thresholds(synth_data, tmp_path, photos):
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"circle": 0.3}))
    return str(photos[0].parent), ["--thresholds", thresholds], thresholds


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("option, case", [("--out", _video), ("--out", _folder_image), ("--csv", _list_entry),
                                          ("--save-video", _list_file), ("--out", _thresholds)],
                         ids=["video", "folder-image", "list-entry", "list-file", "thresholds"])
def test_run_refuses_an_output_onto_its_source_or_thresholds(capsys, trained_run, synth_data, tmp_path, photos,
                                                             option, case, how):
    source, extra, target = case(synth_data, tmp_path, photos)
    before = digest(target)
    result = invoke(capsys, "run", source, "--run", trained_run, "--backend", "onnxruntime", *extra,
                    option, aliased(target, how, tmp_path))
    assert_refused(result, option, target, before)


@pytest.mark.parametrize("how", HOW)
def test_run_refuses_stats_json_onto_run_json(capsys, run_copy, photos, tmp_path, how):
    target = run_copy / "run.json"
    before = digest(target)
    result = invoke(capsys, "run", photos[0], "--run", run_copy, "--backend", "onnxruntime",
                    "--stats-json", aliased(target, how, tmp_path))
    assert_refused(result, "--stats-json", target, before)


def test_run_refuses_a_new_output_inside_its_run_directory(capsys, run_copy, photos):
    result = invoke(capsys, "run", photos[0], "--run", run_copy, "--backend", "onnxruntime",
                    "--out", run_copy / "model.int8.onnx")
    assert_one_line_error(result, "--out", str(run_copy))
    assert not (run_copy / "model.int8.onnx").exists()


@pytest.mark.parametrize("how", HOW)
def test_pack_refuses_a_bundle_onto_the_run_s_graph(capsys, run_copy, tmp_path, how):
    target = run_copy / "model.onnx"
    before = digest(target)
    result = invoke(capsys, "pack", "--run", run_copy, aliased(target, how, tmp_path), "--no-images")
    assert_refused(result, "OUT", target, before)


@pytest.mark.parametrize("how", HOW)
def test_eval_refuses_save_scores_onto_the_checkpoint(capsys, run_copy, tmp_path, how):
    target = run_copy / "checkpoint.pt"
    before = digest(target)
    result = invoke(capsys, "eval", "--run", run_copy, "--save-scores", aliased(target, how, tmp_path))
    assert_refused(result, "--save-scores", target, before)


@pytest.fixture
def data_copy(synth_data, tmp_path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(synth_data, target)
    return target


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("member", ["image", "annotation", "split"])
def test_data_stats_refuses_the_heatmap_onto_a_dataset_file(capsys, data_copy, tmp_path, member, how):
    train_ids = (data_copy / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    target = {"image": data_copy / "JPEGImages" / f"{train_ids[0]}.jpg",
              "annotation": data_copy / "Annotations" / f"{train_ids[1]}.xml",
              "split": data_copy / "ImageSets" / "Main" / "trainval.txt"}[member]
    before = digest(target)
    result = invoke(capsys, "data", "stats", f"voc:{data_copy}", "--heatmap", aliased(target, how, tmp_path))
    assert_refused(result, "--heatmap", target, before)


def test_export_triton_refuses_to_replace_the_run_directory(capsys, run_copy):
    before = digest(run_copy / "run.json")
    result = invoke(capsys, "export", "triton", run_copy.parent, "--run", run_copy, "--name", run_copy.name)
    assert_one_line_error(result, "OUT", str(run_copy))
    assert digest(run_copy / "run.json") == before


@pytest.mark.parametrize("how", ["path", "symlink"])
def test_export_deepstream_refuses_to_write_into_the_run_directory(capsys, run_copy, tmp_path, how):
    before = sorted(path.name for path in run_copy.iterdir())
    result = invoke(capsys, "export", "deepstream", aliased(run_copy, how, tmp_path), "--run", run_copy)
    assert_one_line_error(result, "OUT", run_copy.name)
    assert sorted(path.name for path in run_copy.iterdir()) == before


def test_service_install_refuses_an_out_dir_inside_the_run_directory(capsys, trained_run):
    result = invoke(capsys, "service", "install", "--run", trained_run, "--out-dir", trained_run, "--print")
    assert_one_line_error(result, "--out-dir", str(trained_run))


def test_outputs_onto_each_other_and_unrelated_links(tmp_path):
    from mlic_edge.errors import MlicError
    from mlic_edge.io import refuse_output_onto_inputs

    run, video = tmp_path / "run", tmp_path / "v.mp4"
    run.mkdir()
    (run / "run.json").write_text("{}")
    video.write_bytes(b"x")
    with pytest.raises(MlicError, match="--csv and --out are the same file"):
        refuse_output_onto_inputs({"--out": tmp_path / "p.jsonl", "--csv": tmp_path / "." / "p.jsonl"}, [video])
    (tmp_path / "p.jsonl").write_text("")
    with pytest.raises(MlicError, match="--csv and --out are the same file"):
        refuse_output_onto_inputs({"--out": tmp_path / "p.jsonl", "--csv": aliased(tmp_path / "p.jsonl", "hardlink",
                                                                                   tmp_path)}, [video])
    elsewhere = tmp_path / "old.jsonl"
    elsewhere.write_text("")
    (tmp_path / "linked.jsonl").hardlink_to(elsewhere)  # a hard link, but to no input: fine
    refuse_output_onto_inputs({"--out": tmp_path / "linked.jsonl", "--csv": tmp_path / "new.csv", "--json": None},
                              [video, run, tmp_path / "missing.txt"])
