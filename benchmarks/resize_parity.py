"""Do imported checkpoints score photographs as their authors' code does? The resize, before and after warp-antialias.

    python benchmarks/resize_parity.py            # needs scikit-image (its photographs) and the dev extra

For each imported format (ML-GCN, MSRN, Query2Label at 448 and 224 px) an official-layout checkpoint with random
weights (written by the import tests' helpers, tests/test_import_*.py) is imported and exported to ONNX. Each of
scikit-image's photographs (and one turned to portrait) is then scored twice:
- the authors' way: the file opened with PIL, the official test transform (ML-GCN's and MSRN's ``Warp``: PIL's
  bilinear ``resize((s, s))``; Query2Label's ``transforms.Resize((s, s))``), ``ToTensor``, ``Normalize``, and the
  imported model in PyTorch (the import tests hold it to the official forward's logits);
- mlic-edge's way: the same file through the runtime (``read_image``, ``Classifier``: ``spec_input``, ONNX Runtime
  on model.onnx), with the run's resize ``warp-antialias`` (after) and OpenCV's ``warp`` (before).
The final layer's weights are scaled so that scores spread over (0, 1): a saturated sigmoid would hide any
difference. Also timed: the resize of a 640x480 frame to 448x448. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from common import results_header, write_results

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
          "retina.jpg")
PORTRAIT = "rocket.jpg"  # also turned a quarter: Pillow 13 resizes a portrait's rows first
LOGIT_RANGE = 3.0  # the final layer is scaled so that logits lie within ±this: a sigmoid's scores, not saturated
FORMATS = (("ML-GCN", "ml-gcn", 448), ("MSRN", "msrn", 448), ("Query2Label", "q2l", 448), ("Query2Label", "q2l", 224))


@dataclasses.dataclass
class Official:
    """An official-layout checkpoint and what the import and the official transform need."""

    checkpoint: Path
    request: dict[str, Any]  # ImportRequest fields beyond format and checkpoint
    backbone: str
    head: tuple[str, ...]  # the final layer's tensors, scaled to spread the scores
    resize_call: str  # how the official test transform resizes


def official_checkpoint(fmt: str, size: int, folder: Path, scale: float = 1.0) -> Official:
    """Written by the import tests' helpers (random weights), the final layer multiplied by ``scale``."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "ml-gcn":
        import test_import_mlgcn as mlgcn

        vectors = np.random.default_rng(3).standard_normal((len(mlgcn.CUSTOM_LABELS), 16)).astype(np.float32)
        labels = folder / "labels.txt"
        labels.write_text("\n".join(mlgcn.CUSTOM_LABELS) + "\n")
        torch.manual_seed(0)  # the helper's ResNet starts from torch's global generator: the same one each call
        state = mlgcn.official_state(mlgcn.official_gen_a(mlgcn.CUSTOM_ADJ, mlgcn.CUSTOM_NUMS), label_dim=16)
        head = ("gc2.weight",)
        _scale(state, head, scale)
        checkpoint = mlgcn.save_official(folder / "checkpoint.pth.tar", state)
        graph = {"nums": mlgcn.CUSTOM_NUMS, "adj": mlgcn.CUSTOM_ADJ}
        request = {"labels": str(labels), "word_vectors": mlgcn.write_pickle(folder / "glove.pkl", vectors),
                   "adjacency": mlgcn.write_pickle(folder / "adj.pkl", graph)}
        return Official(checkpoint, request, "resnet18", head, "Warp: PIL resize((s, s), BILINEAR)")
    if fmt == "msrn":
        import test_import_msrn as msrn

        state = msrn.official_state()
        head = ("fc2.weight", "fc2.bias")
        _scale(state, head, scale)
        labels, vectors, graph = msrn.label_files(folder)
        request = {"labels": str(labels), "word_vectors": vectors, "adjacency": graph}
        return Official(msrn.write_checkpoint(folder / "checkpoint.pth.tar", state), request, "resnet18", head,
                        "Warp: PIL resize((s, s), BILINEAR)")
    import test_import_q2l as q2l

    state, config = q2l.official_resnet_checkpoint(depth=101, hidden_dim=2048, nheads=4, ffn_dim=2048, enc_layers=1,
                                                   dec_layers=2, keep_input_proj=False, self_attention=True,
                                                   img_size=size)
    head = ("fc.W", "fc.b")
    _scale(state, head, scale)
    checkpoint, options = q2l.write_checkpoint(folder, state, config)
    return Official(checkpoint, {"labels": options.labels, "config": options.config}, "resnet101", head,
                    "transforms.Resize((s, s)) on the PIL image")


def _scale(state: dict, keys: tuple[str, ...], factor: float) -> None:
    for key in keys:
        state[key] = state[key] * factor


def official_transform(fmt: str, size: int, mean: list[float], std: list[float]) -> Callable[[Any], Any]:
    """The official test transform of ``fmt`` on a PIL image."""
    from PIL import Image
    from torchvision import transforms

    if fmt == "q2l":
        resize: Callable[[Any], Any] = transforms.Resize((size, size))
    else:  # ML-GCN's and MSRN's Warp
        def resize(image: Any) -> Any:
            return image.resize((size, size), Image.BILINEAR)
    return transforms.Compose([resize, transforms.ToTensor(), transforms.Normalize(mean, std)])


def photo_files(folder: Path) -> list[Path]:
    """scikit-image's photographs, and one turned to portrait (written as PNG, losslessly)."""
    import cv2
    import skimage.data

    shipped = Path(skimage.data.__file__).parent
    portrait = folder / f"{Path(PORTRAIT).stem}-portrait.png"
    cv2.imwrite(str(portrait), cv2.rotate(cv2.imread(str(shipped / PORTRAIT)), cv2.ROTATE_90_CLOCKWISE))
    return [shipped / name for name in PHOTOS] + [portrait]


def authors_scores(run_path: Path, fmt: str, photos: list[Path]) -> np.ndarray:
    """(photos, classes): PIL, the official transform, the imported model in PyTorch."""
    import torch
    from PIL import Image

    from mlic_edge.models.checkpoint import load_model
    from mlic_edge.rundir import RunDir

    run = RunDir(run_path)
    spec = run.spec()
    transform = official_transform(fmt, spec.img_size, spec.mean, spec.std)
    model = load_model(run.checkpoint).for_export()
    with torch.no_grad():
        return np.stack([model(transform(Image.open(path).convert("RGB"))[None]).numpy()[0] for path in photos])


def runtime_scores(run_path: Path, photos: list[Path], resize: str) -> tuple[np.ndarray, np.ndarray]:
    """(scores (photos, classes), max |Δ grey level| of each resized frame against PIL's) through the runtime's
    preprocessing with ``resize``."""
    from PIL import Image

    from mlic_edge.data.images import read_image, resize_image
    from mlic_edge.rundir import RunDir
    from mlic_edge.runtime.inference.backends.onnxruntime_backend import OnnxRuntimeBackend
    from mlic_edge.runtime.inference.classifier import Classifier

    run = RunDir(run_path)
    spec = dataclasses.replace(run.spec(), resize=resize)
    size = spec.img_size
    grey = [np.abs(resize_image(read_image(path), size, size, resize)[..., ::-1].astype(np.int16)
                   - np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))).max()
            for path in photos]
    with Classifier(OnnxRuntimeBackend(run.onnx()), spec) as classifier:
        scores = np.stack([result.scores for result in classifier([str(path) for path in photos])])
    return scores, np.array(grey)


def make_run(name: str, fmt: str, size: int, work: Path, photos: list[Path]) -> tuple[Path, Official]:
    """Import and export the format's checkpoint, its final layer scaled so that the scores spread."""
    from mlic_edge.commands.export import ExportRequest, export
    from mlic_edge.commands.import_official import ImportRequest, import_official
    from mlic_edge.rundir import RunDir

    run = RunDir(work / f"{fmt}-{size}" / "run")
    scale = 1.0
    for _ in range(2):  # the second import has the final layer scaled from the first one's logits
        official = official_checkpoint(fmt, size, work / f"{fmt}-{size}" / "official", scale)
        import_official(run, ImportRequest(format=fmt, checkpoint=official.checkpoint, img_size=size,
                                           overwrite=True, **official.request))
        scores = authors_scores(run.path, fmt, photos).astype(np.float64)
        logits = np.log(np.clip(scores, 1e-12, None) / np.clip(1 - scores, 1e-12, None))
        print(f"{name} {size} px: logits {logits.mean():+.2f} ± {logits.std():.2f}, max |logit| "
              f"{np.abs(logits).max():.2f}", file=sys.stderr)
        scale *= LOGIT_RANGE / max(float(np.abs(logits).max()), 1e-6)
    export(run, ExportRequest(reference=False))
    return run.path, official


def measure_format(name: str, fmt: str, size: int, work: Path, photos: list[Path]) -> dict[str, Any]:
    run_path, official = make_run(name, fmt, size, work, photos)
    expected = authors_scores(run_path, fmt, photos)
    row: dict[str, Any] = {"format": name, "img_size": size, "backbone": official.backbone,
                           "official_resize": official.resize_call, "classes": int(expected.shape[1]),
                           "score_mean": round(float(expected.mean()), 3), "score_std": round(float(expected.std()), 3)}
    from mlic_edge.spec import DEFAULT_RESIZE, OFFICIAL_RESIZE

    for label, resize in (("before", DEFAULT_RESIZE), ("after", OFFICIAL_RESIZE)):
        scores, grey = runtime_scores(run_path, photos, resize)
        differences = np.abs(scores - expected).max(axis=1)
        row[label] = {"resize": resize, "max_abs_score_diff": float(differences.max()),
                      "per_photo": {path.name: {"max_abs_score_diff": float(diff), "max_grey_levels": int(levels)}
                                    for path, diff, levels in zip(photos, differences, grey)}}
    return row


def resize_times(rounds: int) -> dict[str, float]:
    """Median ms to resize a 640x480 BGR frame to 448x448: each mode, and Pillow for scale."""
    from PIL import Image

    from mlic_edge.data.images import resize_image
    from mlic_edge.spec import DEFAULT_RESIZE, OFFICIAL_RESIZE

    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pil_image = Image.fromarray(frame)
    candidates = {DEFAULT_RESIZE: lambda: resize_image(frame, 448, 448, DEFAULT_RESIZE),
                  OFFICIAL_RESIZE: lambda: resize_image(frame, 448, 448, OFFICIAL_RESIZE),
                  "Pillow Image.resize (reference)": lambda: pil_image.resize((448, 448), Image.BILINEAR)}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):  # interleaved, so that a busy moment costs every candidate alike
        for name, call in candidates.items():
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: round(float(np.median(values)), 2) for name, values in times.items()}


def markdown(result: dict) -> str:
    lines = [f"# Imported checkpoints on photographs: mlic-edge against the authors' code ({result['date']}, "
             f"{result['machine']})", "",
             "max |Δscore| over scikit-image's photographs (" + ", ".join(result["photos"]) + ") between mlic-edge's "
             "ONNX through the runtime's preprocessing and the official test transform (Pillow " + result["pillow"]
             + ", torchvision " + result["torchvision"] + ") + the same model in PyTorch; random weights in the official layout, the final layer scaled so that scores spread. Before: "
             "OpenCV's `warp`; after: `warp-antialias`, the imported runs' default. Command: `"
             + result["command"] + "`.", "",
             "| format | px | backbone | official resize | scores (mean ± std) | before: max \\|Δscore\\| (max Δ grey) "
             "| after: max \\|Δscore\\| (max Δ grey) |", "|---|---|---|---|---|---|---|"]
    for row in result["formats"]:
        cells = []
        for label in ("before", "after"):
            grey = max(photo["max_grey_levels"] for photo in row[label]["per_photo"].values())
            cells.append(f"{row[label]['max_abs_score_diff']:.2e} ({grey})")
        lines.append(f"| {row['format']} | {row['img_size']} | {row['backbone']} | {row['official_resize']} | "
                     f"{row['score_mean']:.2f} ± {row['score_std']:.2f} | {cells[0]} | {cells[1]} |")
    lines += ["", "Per photograph, max |Δscore| before → after (max Δ grey level against Pillow, before → after):", "",
              "| photo | " + " | ".join(f"{row['format']} {row['img_size']}" for row in result["formats"]) + " |",
              "|---|" + "---|" * len(result["formats"])]
    for photo in result["photos"]:
        cells = []
        for row in result["formats"]:
            before, after = (row[label]["per_photo"][photo] for label in ("before", "after"))
            cells.append(f"{before['max_abs_score_diff']:.1e} → {after['max_abs_score_diff']:.1e} "
                         f"({before['max_grey_levels']} → {after['max_grey_levels']})")
        lines.append(f"| {photo} | " + " | ".join(cells) + " |")
    lines += ["", "Resize of a 640x480 BGR frame to 448x448, median ms over "
              f"{result['timing_rounds']} rounds:", "", "| resize | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in result["resize_ms"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--rounds", type=int, default=200, help="resize timing rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        photos = photo_files(work)
        formats = [measure_format(name, fmt, size, work, photos) for name, fmt, size in FORMATS]
    import PIL
    import torchvision

    result = {**results_header("resize_parity.py"), "pillow": PIL.__version__, "torchvision": torchvision.__version__,
              "photos": [path.name for path in photos], "formats": formats,
              "timing_rounds": args.rounds, "resize_ms": resize_times(args.rounds)}
    write_results(args.out, "resize_parity", result, markdown)


if __name__ == "__main__":
    main()
