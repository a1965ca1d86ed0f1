"""What a training run is asked to do: ``TrainConfig`` holds the only defaults (the CLI's options take theirs from
it). torch-free, so ``mlic-edge train --help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlic_edge.errors import MlicError
from mlic_edge.spec import DEFAULT_DEVICE, DEFAULT_RESIZE, RESIZE_MODES, require_at_least, require_fraction

QAT_LIBRARY = "nvidia-modelopt"  # `train --qat` (train/qat.py)
QAT_CALIB_IMAGES = 256  # training images its int8 ranges are calibrated on before fine-tuning
QAT_WORKERS = 2  # data-loading processes of quantization-aware fine-tuning
QAT_SCHEMES = ("tensorrt", "cpu")
"""Which int8 graph the fine-tuning simulates (train/qat.py ``QatScheme``): TensorRT's Q/DQ graph (symmetric int8
activations) or ONNX Runtime's CPU graph (uint8 activations, per-channel int8 weights, 7-bit where the CPU lacks
VNNI)."""
QAT_TARGETS = ("distill", "labels")
"""What the fake-quantized model is fine-tuned towards: ``distill`` the fp32 model's own scores on the same
augmented images (quantization-aware distillation, QAD in ModelOpt's guide "Quantization-Aware Training and
Distillation": a frozen full-precision teacher, a logit-level KL loss; for independent sigmoid labels that KL is the
binary cross-entropy against the teacher's sigmoid, up to a constant), or ``labels`` the ground truth with the run's
loss (QAT proper). Distillation keeps the int8 scores where the fp32 ones were, so labels at the threshold agree;
training on labels moves the scores wherever the loss prefers."""


def modelopt_missing(detail: str = "") -> MlicError:
    """The one-line refusal of `train --qat` where NVIDIA ModelOpt is not installed (said before PyTorch loads)."""
    return MlicError(f"quantization-aware training needs NVIDIA ModelOpt ({QAT_LIBRARY}), which is not installed"
                     + (f" ({detail})" if detail else ""),
                     hint='pip install "nvidia-modelopt>=0.47", what the [qat] extra installs')


SAMPLERS = ("random", "class-aware")
DIFFICULT_POLICIES = ("ignore", "positive", "negative")  # VOC difficult objects
AMP_MODES = ("bf16", "fp16", "off")  # autocast dtype on CUDA; None: fp16 on CUDA, off on CPUs


@dataclass
class TrainConfig:
    """A training run. The fields left ``None`` come from the model's recipe (``recipe``: paper or quick,
    mlic_edge/models/recipe.py); each one given overrides that field alone."""

    model: str
    data: str
    out: Path
    recipe: str = "paper"
    backbone: str | None = None
    epochs: int | None = None
    img_size: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None  # 0 turns the recipe's clipping off
    ema_decay: float | None = None  # 0 turns the recipe's EMA off
    loss: str | None = None
    loss_options: dict[str, Any] = field(default_factory=dict)
    sampler: str = "random"
    stages: str | None = None  # STAGE_MODES; None: the recipe's (semdep: paper sequential, quick concurrent)
    label_vectors: str | None = None
    trust_pickle: bool = False  # unpickle a --label-vectors pickle fully, which can run code from it
    crop_scale: float | None = None
    resize: str = DEFAULT_RESIZE
    pretrained: bool | None = None  # None: the recipe's (STARTS_PRETRAINED: paper yes, quick no)
    pretrained_file: str | None = None  # the backbone's ImageNet weights from this file (implies pretrained)
    train_split: str | None = None
    eval_split: str | None = None
    val_fraction: float = 0.1  # of the training split, held out before training to choose the best epoch (0: the eval split)
    difficult: str = "ignore"
    workers: int = 2
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  # train afresh into a run that has exports: its old generation moves to previous/
    device: str = DEFAULT_DEVICE
    sync_bn: bool = False  # SyncBatchNorm across the ranks of a torchrun launch (CUDA only)
    accumulate: int = 1  # optimizer step every ``accumulate`` batches
    amp: str | None = None
    channels_last: bool | None = None  # None: on CUDA devices (Tensor Core convolutions), off on CPUs
    compile: bool = False  # torch.compile the training step
    model_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from mlic_edge.models.recipe import stage_mode

        self.stages = stage_mode(self.stages)  # a train_config recorded before the stage modes holds a bool

    def validate(self) -> None:
        """Refuse, before any file is written, an option no training can run with."""
        from mlic_edge.models.recipe import RECIPE_NAMES, SCHEDULES, STAGE_MODES, WEIGHTS_FILE_FORMATS

        require_at_least("--lr", self.lr, 0, above=True, hint="for example 1e-3")
        require_at_least("--warmup-epochs", self.warmup_epochs, 0, hint="0 starts at the full learning rate")
        require_at_least("--weight-decay", self.weight_decay, 0, hint="0 turns it off; 1e-4 is typical")
        require_at_least("--grad-clip", self.grad_clip, 0, hint="0 turns the recipe's clipping off")
        require_fraction("--val-fraction", self.val_fraction, upper_open=True,
                         hint="a share of the training split, for example 0.1 (0: choose the best epoch on the eval "
                              "split)")
        if self.val_fraction > 0.5:
            raise MlicError(f"--val-fraction {self.val_fraction} would hold out more than half the training split",
                            hint="for example 0.1 (0: choose the best epoch on the eval split)")
        checks = [
            (self.recipe in RECIPE_NAMES, f"--recipe must be one of {', '.join(RECIPE_NAMES)}"),
            (self.epochs is None or self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size is None or self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.img_size is None or self.img_size >= 32, "--img-size must be at least 32"),
            (self.workers >= 0, "--workers must be 0 or more"),
            (self.crop_scale is None or 0.05 <= self.crop_scale <= 1.0, "--crop-scale must be in [0.05, 1]"),
            (self.ema_decay is None or 0 <= self.ema_decay < 1, "--ema-decay must be in [0, 1) (0: off)"),
            (self.schedule is None or self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.stages is None or self.stages in STAGE_MODES, f"--stages must be one of {', '.join(STAGE_MODES)}"),
            (self.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}"),
            (self.resize in RESIZE_MODES, f"--resize must be one of {', '.join(RESIZE_MODES)}"),
            (self.difficult in DIFFICULT_POLICIES, f"--difficult must be one of {', '.join(DIFFICULT_POLICIES)}"),
            (isinstance(self.accumulate, int) and self.accumulate >= 1, "--accumulate must be at least 1"),
            (self.amp is None or self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}"),
            (not (self.sync_bn and self.device == "cpu"),
             "--sync-bn needs CUDA devices (gloo on CPUs has no SyncBatchNorm)"),
            (self.amp in (None, "off") or self.device != "cpu",
             f"--amp {self.amp} needs a CUDA device (training on CPUs runs in float32: use --amp off)"),
        ]
        for ok, message in checks:
            if not ok:
                raise MlicError(message)
        if self.pretrained_file is not None and not self.resume:
            if self.pretrained is False:
                raise MlicError("--pretrained-file and --no-pretrained contradict each other",
                                hint="drop --no-pretrained to start from the file's weights, or the file")
            if not Path(self.pretrained_file).is_file():
                raise MlicError(f"--pretrained-file {self.pretrained_file} does not exist",
                                hint=f"pass {WEIGHTS_FILE_FORMATS}")

    def starts_pretrained(self) -> bool:
        """Whether training starts from ImageNet weights: --pretrained-file, else --pretrained/--no-pretrained,
        else the recipe's (``STARTS_PRETRAINED``)."""
        from mlic_edge.models.recipe import STARTS_PRETRAINED

        if self.pretrained_file is not None:
            return True
        return self.pretrained if self.pretrained is not None else STARTS_PRETRAINED.get(self.recipe, False)

    def resolve(self, recipes: dict[str, Any]) -> Any:
        """The model's recipe with every field this config gives in its place (0 turns clipping or EMA off)."""
        recipe = recipes[self.recipe].with_changes(
            epochs=self.epochs, img_size=self.img_size, batch_size=self.batch_size, lr=self.lr,
            optimizer=self.optimizer, schedule=self.schedule, warmup_epochs=self.warmup_epochs,
            weight_decay=self.weight_decay, crop_scale=self.crop_scale, loss=self.loss,
            loss_options=self.loss_options or None, grad_clip=self.grad_clip, ema_decay=self.ema_decay,
            stages=self.stages)
        from dataclasses import replace

        return replace(recipe, grad_clip=recipe.grad_clip or None, ema_decay=recipe.ema_decay or None)
