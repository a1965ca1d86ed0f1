"""``warp-antialias``: PIL's bilinear resize without PIL (mlic_edge/data/resample.py), held to Pillow itself (the
test-only reference) on random images and on photographs, and carried by imported runs through export and the
runtime, the folded uint8 graph included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlic_edge.data.images import preprocess, resize_image
from mlic_edge.data.resample import pil_bilinear_resize, rows_first
from mlic_edge.spec import OFFICIAL_RESIZE, UINT8_INPUT

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")
SIZES = [  # (height, width) in, (height, width) out: down, up, mixed, one axis only, tiny, large factors
    ((480, 640), (448, 448)), ((100, 80), (448, 448)), ((1000, 37), (224, 224)), ((37, 1000), (224, 224)),
    ((3000, 4000), (224, 224)), ((5, 7), (3, 2)), ((1, 1), (448, 448)), ((480, 640), (480, 320)),
    ((480, 640), (200, 640)), ((333, 517), (577, 211)), ((448, 448), (448, 448)), ((720, 1280), (576, 576)),
    ((640, 480), (448, 448)), ((1280, 720), (224, 224)),  # portraits: Pillow 13 resamples their rows first
]


def pillow(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def same_pass_order_as_pillow(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the width,
    as ``pil_bilinear_resize`` does; earlier Pillows never did, and then some pixels differ by one grey level."""
    import PIL

    return int(PIL.__version__.split(".")[0]) >= 13 or not rows_first(*in_size, *out_size)


def assert_like_pillow(image: np.ndarray, width: int, height: int) -> None:
    ours, theirs = pil_bilinear_resize(image, width, height), pillow(image, width, height)
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    difference = np.abs(ours.astype(np.int16) - theirs).max()
    assert difference <= 1, (image.shape, width, height)
    if same_pass_order_as_pillow(image.shape[:2], (height, width)):
        assert difference == 0, (image.shape, width, height)  # Pillow's integers, not an approximation


@pytest.mark.parametrize("in_size, out_size", SIZES)
def test_random_images_resize_as_pillow_resizes_them(in_size, out_size):
    rng = np.random.default_rng(sum(in_size) + sum(out_size))
    height, width = out_size
    assert_like_pillow(rng.integers(0, 256, (*in_size, 3), dtype=np.uint8), width, height)
    assert_like_pillow(rng.integers(0, 256, in_size, dtype=np.uint8), width, height)  # one channel


def test_a_smooth_image_is_not_a_trivial_case():
    """Random noise averages out; a gradient with edges checks the filter's shape and the rounding between passes,
    and the test can fail: OpenCV's bilinear, which does not antialias, is far from Pillow's."""
    import cv2

    y, x = np.mgrid[0:600, 0:900]
    image = np.stack([(x * 255 // 899), (y * 255 // 599), ((x // 7 + y // 5) % 2) * 255], -1).astype(np.uint8)
    assert_like_pillow(image, 448, 448)
    assert np.abs(cv2.resize(image, (448, 448)).astype(np.int16) - pillow(image, 448, 448)).max() > 50


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("size", [448, 224, 576])
@pytest.mark.parametrize("portrait", [False, True])
def test_photographs_resize_as_pillow_resizes_them(name, size, portrait):
    """scikit-image's photographs (landscape or square; turned a quarter for portraits), read as the runtime reads
    frames (BGR, OpenCV): Pillow on the RGB image."""
    skimage_data = pytest.importorskip("skimage.data")
    from mlic_edge.data.images import read_image

    frame = read_image(Path(skimage_data.__file__).parent / name)
    if portrait:
        frame = np.ascontiguousarray(np.rot90(frame))
    rgb = np.ascontiguousarray(frame[..., ::-1])
    ours = resize_image(frame, size, size, OFFICIAL_RESIZE)[..., ::-1]
    difference = np.abs(ours.astype(np.int16) - pillow(rgb, size, size)).max()
    assert difference <= (0 if same_pass_order_as_pillow(frame.shape[:2], (size, size)) else 1)


def test_the_tensor_is_the_official_transform_s():
    """preprocess(warp-antialias) is torchvision's Resize((s, s)) → ToTensor → Normalize on the PIL image, as the
    official evaluations run it, to float rounding."""
    from torchvision import transforms

    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    official = transforms.Compose([transforms.Resize((448, 448)), transforms.ToTensor(),
                                   transforms.Normalize(mean, std)])
    expected = official(Image.fromarray(np.ascontiguousarray(frame[..., ::-1]))).numpy()
    np.testing.assert_allclose(preprocess(frame, 448, mean, std, OFFICIAL_RESIZE), expected, atol=1e-5, rtol=0)


def test_weights_are_cached_and_the_input_is_left_alone():
    from mlic_edge.data.resample import axis_filter

    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    kept = frame.copy()
    pil_bilinear_resize(frame, 40, 30)
    assert axis_filter(64, 40) is axis_filter(64, 40) and np.array_equal(frame, kept)
    same = pil_bilinear_resize(frame, 64, 48)
    assert np.array_equal(same, frame) and same is not frame
    with pytest.raises(ValueError, match="uint8"):
        pil_bilinear_resize(frame.astype(np.float32), 40, 30)


def test_threads_resizing_at_once_each_get_their_own_result():
    """The work arrays are kept per thread (the runtime preprocesses on several)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
    expected = [pillow(frame, 448, 448) for frame in frames]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            results = list(pool.map(lambda frame: pil_bilinear_resize(frame, 448, 448), frames))
            assert all(np.array_equal(ours, theirs) for ours, theirs in zip(results, expected))


def test_the_runtime_resizes_without_pil():
    code = ("import sys, numpy as np\n"
            "from mlic_edge.data.images import resize_image\n"
            "from mlic_edge.runtime.inference.classifier import Classifier\n"
            f"resize_image(np.zeros((30, 40, 3), np.uint8), 16, 16, {OFFICIAL_RESIZE!r})\n"
            "assert 'PIL' not in sys.modules, 'PIL was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- an imported run, export and runtime
@pytest.fixture(scope="module")
def imported_run(tmp_path_factory):
    """An official-layout ML-GCN checkpoint (random weights, 4 classes) imported at 48 px and exported."""
    from test_import_mlgcn import (CUSTOM_ADJ, CUSTOM_LABELS, CUSTOM_NUMS, official_gen_a, official_state,
                                   save_official, write_pickle)

    from mlic_edge.commands.export import ExportRequest, export
    from mlic_edge.commands.import_official import ImportRequest, import_official
    from mlic_edge.rundir import RunDir

    work = tmp_path_factory.mktemp("imported")
    vectors = np.random.default_rng(3).standard_normal((len(CUSTOM_LABELS), 16)).astype(np.float32)
    classes = work / "classes.txt"
    classes.write_text("\n".join(CUSTOM_LABELS) + "\n")
    checkpoint = save_official(work / "checkpoint.pth.tar",
                               official_state(official_gen_a(CUSTOM_ADJ, CUSTOM_NUMS), label_dim=16))
    run = RunDir(work / "run")
    summary = import_official(run, ImportRequest(
        format="ml-gcn", checkpoint=checkpoint, labels=str(classes), img_size=48,
        word_vectors=write_pickle(work / "glove.pkl", vectors),
        adjacency=write_pickle(work / "adj.pkl", {"nums": CUSTOM_NUMS, "adj": CUSTOM_ADJ})))
    export(run, ExportRequest(reference=False))
    return run, summary


@pytest.fixture(scope="module")
def uint8_run(imported_run, tmp_path_factory):
    """The imported run exported with the normalisation folded into the graph (``--uint8-input``)."""
    import shutil

    from mlic_edge.commands.export import ExportRequest, export
    from mlic_edge.rundir import RunDir

    run = RunDir(tmp_path_factory.mktemp("uint8") / "run")
    shutil.copytree(imported_run[0].path, run.path)
    export(run, ExportRequest(reference=False, uint8_input=True))
    return run


def test_an_imported_run_resizes_as_its_authors_code_and_says_nothing_about_opencv(imported_run):
    run, summary = imported_run
    assert json.loads((run.path / "run.json").read_text())["resize"] == OFFICIAL_RESIZE
    assert not any("OpenCV" in note for note in summary["notes"])


def test_deepstream_is_told_that_nvinfer_does_not_resize_as_pil(imported_run, tmp_path):
    from mlic_edge.runtime.deployment.serving_configs import write_deepstream_config

    config = write_deepstream_config(imported_run[0], tmp_path / "ds").read_text()
    assert "PIL's antialiased squash" in config


def test_the_folded_uint8_graph_follows_the_run_s_resize(uint8_run):
    """The runtime resizes (warp-antialias) before the uint8 graph, which normalises: its scores on a photo-sized
    frame are the PyTorch model's on the official transform's tensor, and OpenCV's resize would move them (the test
    can fail)."""
    import torch
    from torchvision import transforms

    import mlic_edge
    from mlic_edge.models.checkpoint import load_model

    run = uint8_run
    spec = run.spec()
    assert spec.input_format == UINT8_INPUT
    y, x = np.mgrid[0:300, 0:400]
    frame = np.stack([x * 255 // 399, y * 255 // 299, ((x // 3 + y // 2) % 2) * 255], -1).astype(np.uint8)
    model = load_model(run.checkpoint).for_export()
    official = transforms.Compose([transforms.Resize((spec.img_size, spec.img_size)), transforms.ToTensor(),
                                   transforms.Normalize(spec.mean, spec.std)])
    with torch.no_grad():
        expected = model(official(Image.fromarray(np.ascontiguousarray(frame[..., ::-1])))[None]).numpy()[0]
        opencv = model(torch.from_numpy(preprocess(frame, spec.img_size, spec.mean, spec.std, "warp"))[None])
    with mlic_edge.load(run.path, backend="onnxruntime") as classifier:
        assert classifier.spec.resize == OFFICIAL_RESIZE and classifier.prepare([frame]).dtype == np.uint8
        scores = classifier(frame).scores
    assert np.abs(scores - expected).max() < 1e-5
    assert np.abs(opencv.numpy()[0] - expected).max() > 1e-3
