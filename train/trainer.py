"""The training loop: BCE-family loss, SGD/AdamW, warm-up + cosine/step, AMP on CUDA, validation mAP each epoch,
best checkpoint, resume. The validation split is held out of the training split before training (``--val-fraction``,
chosen from the seed: mlic_edge/data/splits.py) and chooses the best epoch and weights; the eval split is scored once
training ended (``eval_mAP``), touched by no choice. With ``--val-fraction 0`` the eval split chooses, as before. Writes the run directory (checkpoint.pt, last.pt, run.json, reports/train_log.csv).

Under ``torchrun`` (train/distributed.py) the same loop runs as DistributedDataParallel: each rank trains on its
share of the data (``--batch-size`` is per process), validation is sharded and gathered back into dataset order (so
the val mAP is the single-process one of the same weights), and rank 0 alone writes the run directory."""

from __future__ import annotations

import contextlib
import csv
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from rich.markup import escape
from timm.utils import ModelEmaV3

from mlic_edge import metrics
from mlic_edge.console import describe_duration, info, progress_bar, warn
from mlic_edge.data import open_dataset
from mlic_edge.data.dataset import MultiLabelDataset
from mlic_edge.data.splits import ValidationSplit, split_off_validation
from mlic_edge.data.torch_data import ImageDataset, cut_mix, describe_broken, make_loader
from mlic_edge.errors import Interrupted, MlicError, NonFiniteError
from mlic_edge.models import create_model, get_model_entry
from mlic_edge.models.backbone import backbone_data_config, locate_pretrained_weights
from mlic_edge.models.checkpoint import load_weights, read_checkpoint, read_training_state, save_checkpoint
from mlic_edge.models.recipe import Recipe, stage_mode
from mlic_edge.plot import line_chart
from mlic_edge.rundir import RunDir
from mlic_edge.spec import FLOAT_INPUT, DatasetSection, LabelGraphSection, RecipeSection, RunSpec, TrainSection
from mlic_edge.train.config import TrainConfig
from mlic_edge.train.distributed import DistContext, process_group
from mlic_edge.train.evaluate import SplitScores, predict_scores
from mlic_edge.train.losses import create_loss
from mlic_edge.train.schedule import create_optimizer, create_scheduler


def _check_resumed_classes(run: RunDir, names: list[str]) -> None:
    """--resume on a dataset whose classes differ (or come in another order) would train outputs under other names
    while run.json and the exported model keep the old ones: refuse it, naming the first difference."""
    labels = run.spec().labels if run.exists() else None
    if labels is None or list(names) == list(labels):
        return
    if sorted(names) == sorted(labels):
        index = next(i for i, (new, old) in enumerate(zip(names, labels)) if new != old)
        why = f"the same classes in another order ({names[index]!r} here, {labels[index]!r} there at position {index})"
    else:
        added, missing = sorted(set(names) - set(labels)), sorted(set(labels) - set(names))
        why = "; ".join(part for part in (f"new here: {', '.join(added)}" if added else "",
                                          f"missing here: {', '.join(missing)}" if missing else "") if part)
    raise MlicError(f"--resume: this dataset's classes differ from {run.run_json}'s: {why}",
                    hint="resume on the dataset the run was trained on, or train into a new --out")


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MlicError(f"--device {name} asked for, but PyTorch sees no CUDA GPU", hint="use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _TrainingLoss(torch.nn.Module):
    """The model's training loss as a ``forward``: DistributedDataParallel synchronises gradients through its wrapped
    module's forward only, and the trainer calls ``model.training_loss``, not ``model(...)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, targets: torch.Tensor, loss_fn) -> torch.Tensor:
        return self.model.training_loss(images, targets, loss_fn)


def uses_channels_last(asked: bool | None, device: torch.device) -> bool:
    """``--channels-last``: NHWC is the layout cuDNN's Tensor Core convolutions run natively, so it is the CUDA
    default. On CPUs it is opt-in: on the 2-core development CPU one training step took 0.98× (resnet10t, 96 px) and
    0.91× (resnet50, 224 px) of the NCHW time, measured interleaved on a busy machine, a gain too small and too
    model-dependent (reshape-heavy heads such as Q2L's are untested) to make it the default."""
    return device.type == "cuda" if asked is None else asked


def autocast_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device`` (None: float32). fp16 is the CUDA default; on CPUs training runs
    in float32 and an explicit bf16/fp16 is refused (CPU autocast is slower than float32 for these convnets)."""
    if device.type != "cuda":
        if amp not in (None, "off"):
            raise MlicError(f"--amp {amp} needs a CUDA device (training on {device} runs in float32)",
                            hint="use --amp off")
        return None
    return {None: torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[amp]


def train(config: TrainConfig) -> dict[str, Any]:
    """Train and write the run directory; returns the final metrics section of run.json. Under torchrun, joins the
    process group for the run and leaves it at the end."""
    config.validate()
    device = select_device(config.device)
    autocast_dtype(config.amp, device)  # refused before any process group or file
    if config.sync_bn and device.type != "cuda":
        raise MlicError("--sync-bn needs CUDA devices (gloo on CPUs has no SyncBatchNorm)", hint="drop --sync-bn")
    done: dict[str, Any] = {}  # what a stop's note reports: the epochs planned and those complete
    with process_group(device) as dist, _note_on_stop(config, done):
        return _train(config, dist, done)


def _train(config: TrainConfig, dist: DistContext, done: dict[str, Any]) -> dict[str, Any]:
    """The training's steps: the data, a resumed or new run, the recipe, the model, run.json, the epochs."""
    entry = get_model_entry(config.model)
    run = RunDir(config.out)
    seed_everything(config.seed)
    # Where the ImageNet weights come from is settled before datasets are read or files moved: without network
    # and without a local copy, training stops here with one line.
    pretrained_file = config.pretrained_file
    if config.starts_pretrained() and not config.resume and pretrained_file is None:
        pretrained_file = locate_pretrained_weights(config.backbone or entry.default_backbone)
    train_set, eval_set = _read_splits(config, dist)
    config, resume_state = _resume_or_start(config, run, train_set, dist)
    train_set, val_set, validation = _hold_out_validation(config, train_set)
    recipe = _resolved_recipe(config, entry.recipes, config.starts_pretrained() or resume_state is not None)
    loop = _build_loop(config, recipe, run, dist, entry, train_set, eval_set, pretrained_file,
                       fresh=resume_state is None)
    loop.val_set, loop.validation = val_set, validation
    start_epoch, best_map, history = _start_epochs(loop, resume_state)
    train_config = _train_config(config, recipe, loop)
    section_extra = {"world_size": dist.world_size} if dist.enabled else {}  # the train section's own fields
    section_extra["selected_on"] = "validation" if val_set is not None else "eval"
    if dist.is_main:
        _record_run(loop, input_format=run.spec().input_format if resume_state is not None and run.exists()
                    else FLOAT_INPUT)
        done["train_config"] = train_config  # run.json now describes this training; a stop says how far it got
        info(f"training [bold]{config.model}[/bold] ({loop.backbone}, {loop.img_size}px) on {train_set.spec}: "
             f"{len(train_set)} train / " + (f"{len(val_set)} validation (the best epoch is chosen on them) / "
                                             if val_set is not None else "") +
             f"{len(eval_set)} eval images, {train_set.num_classes} classes, device "
             f"{dist.device}" + (f", {dist.world_size} processes" if dist.enabled else ""))

    broken_train: list[int] = []
    started = time.monotonic()
    done.update(epochs=recipe.epochs, history=history)
    with progress_bar() as progress, loop.train_loader:
        for epoch in range(start_epoch, recipe.epochs):
            if epoch > 0 and loop.plan[epoch] != loop.plan[epoch - 1]:
                loop.start_stage(epoch)
            task = progress.add_task(f"epoch {epoch + 1}/{recipe.epochs}", total=loop.batches_per_epoch, status="")
            epoch_started = time.monotonic()
            running, seen = _train_epoch(loop, epoch, progress, task, first=epoch == start_epoch and dist.is_main,
                                         broken=broken_train)
            images_per_s = seen / max(time.monotonic() - epoch_started, 1e-9)  # training, this process, with loading
            running, seen = dist.sum(running, seen)  # the loss over every rank's images
            candidates, val_maps, split_scores = _validate(loop, progress)
            better = max(val_maps, key=lambda name: val_maps[name] if math.isfinite(val_maps[name]) else -1.0)
            train_loss = running / max(1, seen)
            progress.update(task, status=f"loss {train_loss:.4f} val mAP {val_maps['raw'] * 100:.2f}%"
                            + (f" (EMA {val_maps['ema'] * 100:.2f}%)" if loop.ema is not None else ""))
            history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_mAP": _finite(val_maps["raw"]),
                            **({"val_mAP_ema": _finite(val_maps["ema"])} if loop.ema is not None else {}),
                            "lr": loop.scheduler.get_last_lr()[0], "train_images_per_s": round(images_per_s, 2),
                            "elapsed_s": round(time.monotonic() - started, 1)})
            is_best = math.isfinite(val_maps[better]) and val_maps[better] > best_map
            if is_best:
                best_map = val_maps[better]
            if dist.is_main:
                _save_epoch(loop, epoch, candidates[better] if is_best else None, better, best_map, history,
                            train_section=_train_section(train_config, history, dist.device, **section_extra))
        final_eval = _evaluate_best(loop, progress) if val_set is not None else None

    if broken_train:
        warn(describe_broken(train_set, broken_train) + " (training split)")
    if split_scores.broken:
        warn(describe_broken(val_set if val_set is not None else eval_set, split_scores.broken)
             + (" (validation split)" if val_set is not None else " (eval split)"))
    skipped = {"train": len(set(broken_train)), "eval": len(set(split_scores.broken))}
    if final_eval is not None:
        eval_map, eval_broken = final_eval
        if eval_broken:
            warn(describe_broken(eval_set, eval_broken) + " (eval split)")
        skipped.update(val=skipped["eval"], eval=len(set(eval_broken)))
        section_extra["eval_mAP"] = _finite(eval_map) if eval_map is not None else None
    train_section = _train_section(train_config, history, dist.device, **section_extra, skipped_images=skipped)
    if dist.is_main:
        run.update(train=train_section)
    dist.barrier()  # every rank returns once the run directory is complete
    return train_section.to_json()


def _read_splits(config: TrainConfig, dist: DistContext) -> tuple[MultiLabelDataset, MultiLabelDataset]:
    """The training and eval splits of ``config.data``, refused when their classes differ."""
    if dist.is_main:
        info(f"reading {escape(config.data)}…")
    train_set = open_dataset(config.data, role="train", split=config.train_split, difficult=config.difficult)
    eval_set = open_dataset(config.data, role="eval", split=config.eval_split, difficult=config.difficult)
    if eval_set.names != train_set.names:
        raise MlicError("train and eval splits have different classes", hint="check the dataset's class list")
    for note in train_set.notes + eval_set.notes:
        warn(note)
    return train_set, eval_set


def _hold_out_validation(config: TrainConfig, train_set: MultiLabelDataset
                         ) -> tuple[MultiLabelDataset, MultiLabelDataset | None, ValidationSplit | None]:
    """(the images to train on, the validation images, their record): ``config.val_fraction`` of the training split
    held out before training, chosen from ``config.seed`` (mlic_edge/data/splits.py), to choose the best epoch on;
    (the whole split, None, None) with --val-fraction 0, where the eval split chooses it as before."""
    if not config.val_fraction:
        return train_set, None, None
    rest, val_set, validation = split_off_validation(train_set, config.val_fraction, config.seed)
    if not len(validation):
        warn(f"--val-fraction {config.val_fraction}: the training split ({len(train_set)} images) is too small to hold "
             "images out; the best epoch is chosen on the eval split")
        return train_set, None, None
    return rest, val_set, validation


def _resume_or_start(config: TrainConfig, run: RunDir, train_set: MultiLabelDataset, dist: DistContext
                     ) -> tuple[TrainConfig, dict[str, Any] | None]:
    """--resume: the saved training's config (with this invocation's machine options) and last.pt's state, refused
    where the options or classes differ; else (None) a new generation of the run is started."""
    resume_state = None
    if config.resume:
        resume_state = read_training_state(run.last_checkpoint)
        saved = resume_state["train_config"]
        for key in ("model", "backbone", "img_size"):
            if getattr(config, key) not in (None, saved[key]):
                raise MlicError(f"--resume with a different {key} ({getattr(config, key)} vs {saved[key]})",
                                hint="resume with the original options, or train into a new --out")
        if stage_mode(saved.get("stages")) == "sequential" and config.epochs not in (None, saved["epochs"]):
            raise MlicError("a run trained with --stages sequential cannot change --epochs on --resume",
                            hint=f"resume with --epochs {saved['epochs']}: the stage plan depends on it")
        _check_resumed_classes(run, train_set.names)
        config = TrainConfig(**{**saved, "out": config.out, "epochs": config.epochs or saved["epochs"],
                                "val_fraction": saved.get("val_fraction", 0.0),  # older runs chose on the eval split
                                "resume": True, "workers": config.workers, "device": config.device,
                                "sync_bn": config.sync_bn, "amp": config.amp, "channels_last": config.channels_last,
                                "compile": config.compile, "trust_pickle": config.trust_pickle})
    elif dist.is_main:
        run.start_new_generation(config.overwrite, making="training afresh into it",
                                 other_ways="--resume to continue it, ")
    dist.barrier()  # a refusal on rank 0 (an exported run without --overwrite) ends the run before any rank trains
    return config, resume_state


def _resolved_recipe(config: TrainConfig, recipes: dict[str, Recipe], starts_pretrained: bool) -> Recipe:
    """The recipe the options resolve to; from scratch, without the freezing meant for pretrained weights."""
    recipe = config.resolve(recipes)
    if config.recipe == "paper" and not starts_pretrained:
        warn("training from scratch (--no-pretrained): the paper's figures assume an ImageNet-pretrained backbone, "
             "so expect a far lower mAP than the paper's")
    if (recipe.frozen_bn or recipe.frozen_stem) and not starts_pretrained:
        # Freezing keeps pretrained statistics and low-level filters; frozen random ones would never learn.
        info(f"recipe {config.recipe!r} freezes the backbone's BatchNorm and stem, meant for pretrained weights: "
             "training from scratch, they train (pass --pretrained to freeze them)")
        recipe = replace(recipe, frozen_bn=False, frozen_stem=False)
    return recipe


@dataclass
class _Loop:
    """What every epoch uses: the model and its training parts, built once (``_build_loop``); the optimizer,
    schedule and the module that steps are the current stage's (``start_stage``)."""

    config: TrainConfig
    recipe: Recipe
    run: RunDir
    dist: DistContext
    train_set: MultiLabelDataset  # the images trained on (the training split less the validation images)
    eval_set: MultiLabelDataset
    model: torch.nn.Module
    backbone: str
    img_size: int
    mean: list[float]
    std: list[float]
    ema: ModelEmaV3 | None
    frozen_norms: list[torch.nn.Module]
    loss_fn: torch.nn.Module
    plan: list[str | None]
    sampler: Any
    train_loader: Any
    memory_format: torch.memory_format | None
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    optimizer: Any = None
    scheduler: Any = None
    step_model: torch.nn.Module | None = None
    val_set: MultiLabelDataset | None = None  # held out of the training split: the best epoch is chosen on it
    validation: ValidationSplit | None = None

    @property
    def selection_set(self) -> MultiLabelDataset:
        """The split the best epoch and weights are chosen on: the validation split, else the eval split."""
        return self.val_set if self.val_set is not None else self.eval_set

    @property
    def batches_per_epoch(self) -> int:
        return max(1, len(self.train_loader))

    def start_stage(self, epoch: int) -> None:
        """Optimizer and schedule over the epochs of the stage ``epoch`` is in (all epochs without stages)."""
        stage, device = self.plan[epoch], self.dist.device
        if stage is not None:
            self.model.set_training_stage(stage)
            info(f"stage [bold]{stage}[/bold] from epoch {epoch + 1}")
        self.step_model = _TrainingLoss(self.model)
        if self.dist.enabled:  # wrapped after the stage has set which parameters train
            self.step_model = torch.nn.parallel.DistributedDataParallel(
                self.step_model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=stage is not None)
        if self.config.compile:  # after DDP's wrapping, as PyTorch's DDP + compile guide does (DDPOptimizer splits)
            self.step_model = torch.compile(self.step_model)
        steps_per_epoch = math.ceil(self.batches_per_epoch / self.config.accumulate)  # optimizer steps
        recipe = self.recipe
        self.optimizer = create_optimizer(self.model, recipe.optimizer, recipe.lr, recipe.weight_decay,
                                          backbone_lr_scale=recipe.backbone_lr_scale)
        self.scheduler = create_scheduler(self.optimizer, self.plan.count(stage) * steps_per_epoch,
                                          int(recipe.warmup_epochs * steps_per_epoch), recipe.schedule)


def _build_loop(config: TrainConfig, recipe: Recipe, run: RunDir, dist: DistContext, entry,
                train_set: MultiLabelDataset, eval_set: MultiLabelDataset, pretrained_file: str | None, *,
                fresh: bool) -> _Loop:
    """The model (and its label graph), EMA, loss, stage plan, data loader and the first stage's optimizer."""
    device = dist.device
    img_size = recipe.img_size or entry.default_img_size
    backbone = config.backbone or entry.default_backbone
    if dist.is_main:
        info(f"building {config.model} ({backbone})…")
    label_graph = None
    if entry.needs_label_graph:  # counted once, by the rank that writes the run
        label_graph = dist.broadcast_object(
            prepare_label_graph(run, train_set, config.label_vectors, config.trust_pickle) if dist.is_main else None)
    # a resumed run's weights come from last.pt
    model = create_model(config.model, train_set.num_classes, backbone=backbone,
                         pretrained=config.starts_pretrained() and fresh,
                         pretrained_file=pretrained_file if fresh else None, label_graph=label_graph,
                         **config.model_options)
    data_config = backbone_data_config(model.backbone)
    if config.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if uses_channels_last(config.channels_last, device) else None
    model.to(device, memory_format=memory_format or torch.preserve_format)
    frozen_norms = freeze_backbone(model, frozen_bn=recipe.frozen_bn, frozen_stem=recipe.frozen_stem)
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema_decay else None  # timm's, as Query2Label's code

    loss_fn = create_loss(recipe.loss, class_counts=train_set.class_counts(), num_images=len(train_set),
                          **recipe.loss_options)
    plan = stage_plan(model, recipe.epochs, recipe.stages)
    mean, std = recipe.mean or data_config["mean"], recipe.std or data_config["std"]
    train_images = ImageDataset(train_set, img_size, mean, std, augment=True,
                                crop_scale=(recipe.crop_scale, 1.0), resize=config.resize, extra=recipe.augment)
    sampler = _sampler(config.sampler, train_images, config.seed, dist)
    train_loader = make_loader(train_images, recipe.batch_size, shuffle=True, workers=config.workers,
                               seed=config.seed + dist.rank,
                               drop_last=len(train_set) // dist.world_size > recipe.batch_size, sampler=sampler)
    loop = _Loop(config, recipe, run, dist, train_set, eval_set, model, backbone, img_size, mean, std, ema,
                 frozen_norms, loss_fn, plan, sampler, train_loader, memory_format, None, None)
    loop.start_stage(0)
    loop.amp_dtype = autocast_dtype(config.amp, device)
    loop.scaler = torch.amp.GradScaler("cuda", enabled=loop.amp_dtype == torch.float16)  # bf16: no loss scaling
    return loop


def _start_epochs(loop: _Loop, resume_state: dict[str, Any] | None) -> tuple[int, float, list[dict[str, Any]]]:
    """(first epoch, best mAP so far, history): a new training's, or last.pt's with its weights, optimizer, schedule
    and EMA restored."""
    if resume_state is None:
        return 0, -1.0, []
    run, recipe = loop.run, loop.recipe
    load_weights(loop.model, resume_state["state_dict"], run.last_checkpoint)
    loop.start_stage(resume_state["epoch"] - 1)  # the stage the saved optimizer belongs to
    loop.optimizer.load_state_dict(resume_state["optimizer"])
    loop.scheduler.load_state_dict(resume_state["scheduler"])
    start_epoch, best_map, history = resume_state["epoch"], resume_state["best_map"], resume_state["history"]
    if loop.ema is not None and "ema" in resume_state:
        loop.ema.module.load_state_dict(resume_state["ema"])
    if start_epoch >= recipe.epochs:
        raise MlicError(f"{run.last_checkpoint} already finished {start_epoch} epochs",
                        hint="pass a larger --epochs to train longer")
    info(f"resuming {run.path} at epoch {start_epoch + 1}/{recipe.epochs}")
    return start_epoch, best_map, history


def _train_config(config: TrainConfig, recipe: Recipe, loop: _Loop) -> dict[str, Any]:
    """run.json's train config and last.pt's: the options with the recipe's resolved values (a resume trains with
    what ran)."""
    train_config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    resolved = {k: v for k, v in recipe.as_dict().items() if k != "source" and k in train_config}
    train_config.update(resolved, img_size=loop.img_size, backbone=loop.backbone,
                        pretrained=config.starts_pretrained())
    return train_config


def _record_run(loop: _Loop, input_format: str) -> None:
    """run.json's contract, recipe and dataset for this training (its train section follows each epoch)."""
    config, train_set, eval_set = loop.config, loop.train_set, loop.eval_set
    loop.run.path.mkdir(parents=True, exist_ok=True)
    loop.run.record(RunSpec(
        model=config.model, backbone=loop.backbone, img_size=loop.img_size, mean=list(loop.mean), std=list(loop.std),
        resize=config.resize, input_format=input_format, labels=train_set.names, model_config=loop.model.config(),
        recipe=RecipeSection(name=config.recipe, extra=loop.recipe.as_dict()),
        dataset=DatasetSection(spec=train_set.spec, format=train_set.format, train_split=train_set.split,
                               eval_split=eval_set.split, difficult=config.difficult, train_images=len(train_set),
                               eval_images=len(eval_set), train_class_counts=train_set.class_counts().tolist(),
                               **(loop.validation.record if loop.validation is not None else {}))))


def _train_epoch(loop: _Loop, epoch: int, progress, task, *, first: bool, broken: list[int]) -> tuple[float, int]:
    """One epoch of optimizer steps (gradients accumulated over ``config.accumulate`` batches); returns this
    process's summed loss and image count. ``first``: say how long the first batch took; ``broken`` collects the
    unreadable images."""
    config, recipe, model, dist = loop.config, loop.recipe, loop.model, loop.dist
    device = dist.device
    model.train()
    for norm in loop.frozen_norms:  # FrozenBatchNorm: the statistics stay the pretrained ones
        norm.eval()
    if hasattr(loop.sampler, "set_epoch"):
        loop.sampler.set_epoch(epoch)
    if hasattr(loop.loss_fn, "set_epoch"):  # losses with a schedule over training (DAB's φ)
        loop.loss_fn.set_epoch(epoch, recipe.epochs)
    running, seen, epoch_started = 0.0, 0, time.monotonic()
    loop.optimizer.zero_grad(set_to_none=True)
    batches_per_epoch = loop.batches_per_epoch
    if first:  # the slowest: workers start, memory is allocated
        info(f"epoch {epoch + 1}/{recipe.epochs}: first batch… (of {batches_per_epoch}, "
             f"{recipe.batch_size} images each at {loop.img_size} px)")
    for batch_number, batch in enumerate(loop.train_loader, start=1):
        broken.extend(batch.broken)
        if len(batch.indices) == 0:
            progress.advance(task)
            continue
        images = batch.images.to(device, non_blocking=True,
                                 memory_format=loop.memory_format or torch.contiguous_format)
        targets = batch.targets.to(device, non_blocking=True)
        if "cutmix" in recipe.augment:
            images, targets = cut_mix(images, targets)
        steps_now = batch_number % config.accumulate == 0 or batch_number == batches_per_epoch
        loss = _backward(loop, images, targets, epoch, steps_now)
        if steps_now:
            _optimizer_step(loop)
        running += loss.item() * len(batch.indices)
        seen += len(batch.indices)
        progress.update(task, advance=1,
                        status=f"loss {running / seen:.4f} lr {loop.scheduler.get_last_lr()[0]:.2e} "
                               f"{seen / max(time.monotonic() - epoch_started, 1e-9):.1f} img/s")
        if first:
            first = False
            info(first_batch_pace(time.monotonic() - epoch_started, batches_per_epoch))
    return running, seen


def _backward(loop: _Loop, images: torch.Tensor, targets: torch.Tensor, epoch: int, steps_now: bool
              ) -> torch.Tensor:
    """The batch's loss, its (scaled) gradients added; refused when the loss is not finite."""
    # Under DDP, gradients are all-reduced only on the batch that steps the optimizer.
    with (contextlib.nullcontext() if steps_now or not loop.dist.enabled else loop.step_model.no_sync()):
        with torch.autocast(loop.dist.device.type, dtype=loop.amp_dtype, enabled=loop.amp_dtype is not None):
            loss = loop.step_model(images, targets, loop.loss_fn)
        if not torch.isfinite(loss):
            raise MlicError(f"loss became {loss.item()} at epoch {epoch + 1}",
                            hint="lower --lr or use a warm-up (--warmup-epochs)")
        loop.scaler.scale(loss / loop.config.accumulate).backward()
    return loss


def _optimizer_step(loop: _Loop) -> None:
    """One optimizer step on the accumulated gradients (clipped where the recipe says), the schedule and EMA."""
    if loop.recipe.grad_clip:
        loop.scaler.unscale_(loop.optimizer)
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), loop.recipe.grad_clip)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scheduler.step()
    if loop.ema is not None:
        loop.ema.update(loop.model)


def _validate(loop: _Loop, progress) -> tuple[dict[str, torch.nn.Module], dict[str, float], SplitScores]:
    """The selection split's mAP (the validation split's, else the eval split's) of the raw weights (and the EMA's):
    the weights by name, their mAP (NaN where a score is not finite: never the best checkpoint) and the raw weights'
    scores."""
    dist, eval_set = loop.dist, loop.selection_set
    val_task = progress.add_task("  validate", total=len(eval_set), status="")
    candidates = {"raw": loop.model} if loop.ema is None else {"raw": loop.model, "ema": loop.ema.module}
    for network in candidates.values():
        dist.broadcast_buffers(network)
    val_maps, scores_of = {}, {}
    for weights, network in candidates.items():
        scores_of[weights] = _validation_scores(
            dist, network, eval_set, loop.img_size, loop.mean, loop.std, loop.recipe.batch_size,
            loop.config.workers, dist.device, on_batch=lambda n: progress.advance(val_task, n / len(candidates)),
            resize=loop.config.resize)
        try:
            val_maps[weights] = metrics.mean_average_precision(
                scores_of[weights].scores, scores_of[weights].targets(eval_set)).map
        except NonFiniteError:  # a NaN or inf score: no mAP this epoch, so never the best checkpoint
            val_maps[weights] = math.nan
    progress.remove_task(val_task)
    return candidates, val_maps, scores_of["raw"]


def _evaluate_best(loop: _Loop, progress) -> tuple[float | None, list[int]]:
    """(mAP, unreadable images) of checkpoint.pt's weights on the eval split, once training ended: the figure of
    unseen images that no decision looked at (the best epoch was chosen on the validation split). (None, []) where
    no epoch gave a finite mAP (no checkpoint.pt)."""
    dist, eval_set = loop.dist, loop.eval_set
    dist.barrier()  # rank 0 wrote checkpoint.pt
    if not loop.run.checkpoint.is_file():
        return None, []
    load_weights(loop.model, read_checkpoint(loop.run.checkpoint)["state_dict"], loop.run.checkpoint)
    dist.broadcast_buffers(loop.model)
    task = progress.add_task("  eval split", total=len(eval_set), status="")
    scores = _validation_scores(dist, loop.model, eval_set, loop.img_size, loop.mean, loop.std,
                                loop.recipe.batch_size, loop.config.workers, dist.device,
                                on_batch=lambda n: progress.advance(task, n), resize=loop.config.resize)
    progress.remove_task(task)
    try:
        return metrics.mean_average_precision(scores.scores, scores.targets(eval_set)).map, scores.broken
    except NonFiniteError:
        return math.nan, scores.broken


def _save_epoch(loop: _Loop, epoch: int, best: torch.nn.Module | None, weights: str, best_map: float,
                history: list[dict[str, Any]], train_section: TrainSection) -> None:
    """The epoch's files and run.json's train section, put in place together: a stop leaves the last complete
    epoch, resumable from last.pt. checkpoint.pt (``best``: the better of the raw and EMA weights, when this epoch
    is the best) holds ``weights``."""
    run, model, ema = loop.run, loop.model, loop.ema
    with run.transaction() as change:
        if best is not None:
            save_checkpoint(change.path(run.checkpoint), best, epoch=epoch + 1, val_mAP=best_map, weights=weights)
        save_checkpoint(change.path(run.last_checkpoint), model, epoch=epoch + 1, best_map=best_map,
                        history=history, optimizer=loop.optimizer.state_dict(),
                        scheduler=loop.scheduler.state_dict(), train_config=train_section.config,
                        **({"ema": ema.module.state_dict()} if ema is not None else {}))
        _write_log(change.path(run.reports / "train_log.csv"), history)
        change.update(train=train_section)
    line_chart(run.reports / "training_curves.png", f"{loop.config.model} ({loop.backbone})",
               [row["epoch"] for row in history],
               {"train loss": [row["train_loss"] for row in history],
                "val mAP": [row["val_mAP"] for row in history]})


def first_batch_pace(seconds: float, batches_per_epoch: int) -> str:
    """What the first batch's time says about the rest: an upper bound, as start-up is in it."""
    batches = f"{batches_per_epoch} batch{'es' if batches_per_epoch != 1 else ''}"
    return (f"first batch took {describe_duration(seconds)}; at that pace an epoch of {batches} takes up to "
            f"{describe_duration(seconds * batches_per_epoch)} (the first batch is the slowest)")


def _validation_scores(dist: DistContext, network: torch.nn.Module, eval_set, *args: Any, **kwargs: Any
                       ) -> SplitScores:
    """``predict_scores`` of the eval split; under DDP each rank scores its shard and every rank gets the whole
    split's scores back in dataset order, as one process would have computed them."""
    shard = dist.shard(len(eval_set))
    if shard is None:
        return predict_scores(network, eval_set, *args, **kwargs)
    part = predict_scores(network, eval_set.subset(shard), *args, **kwargs)
    shard_indices = np.asarray(shard, dtype=np.int64)
    scores, kept, broken = dist.gather_scores(part.scores, shard_indices[part.kept],
                                              [shard[index] for index in part.broken])
    return SplitScores(scores=scores, kept=kept, broken=broken)


def _train_section(train_config: dict[str, Any], history: list[dict[str, Any]], device, **extra: Any
                   ) -> TrainSection:
    """run.json's train section after the epochs in ``history``; ``best_weights``: whether checkpoint.pt holds the
    raw or the EMA weights (the better of the two at the best epoch); ``extra``: where the best epoch was chosen
    (``selected_on``), ``eval_mAP`` once training ended, the world size, the skipped images."""
    def score(row: dict[str, Any], weights: str) -> float:
        value = row.get(f"val_mAP{'_ema' if weights == 'ema' else ''}")
        return value if value is not None else -1.0

    best_weights, best = max(((weights, row) for row in history for weights in ("raw", "ema")),
                             key=lambda pair: score(pair[1], pair[0]))
    best_val_map = best["val_mAP_ema" if best_weights == "ema" else "val_mAP"]
    if extra.get("selected_on") == "eval":  # chosen on the eval split: its figure is the eval split's
        extra.setdefault("eval_mAP", best_val_map)
    return TrainSection(config=train_config, history=history, epochs_done=len(history), best_epoch=best["epoch"],
                        best_val_mAP=best_val_map, best_weights=best_weights, device=str(device), **extra)


@contextlib.contextmanager
def _note_on_stop(config: TrainConfig, done: dict[str, Any]) -> Iterator[None]:
    """A stop signal at any point of training says what was kept and how to continue (the CLI prints the note);
    ``done`` holds the epochs planned and the history of those complete, once training has started, and the
    training's config once run.json describes it (whose train section then records a stop before any epoch)."""
    try:
        yield
    except Interrupted as stop:
        history, run = done.get("history"), RunDir(config.out)
        if history:
            epochs = done["epochs"]
            stop.note = (f"training stopped after {history[-1]['epoch']} complete epoch(s) of {epochs}; "
                         f"{run.last_checkpoint} is resumable: mlic-edge train --model {config.model} --data "
                         f"{config.data} --out {run.path} --epochs {epochs} --resume")
        elif config.resume:
            stop.note = f"training stopped before another epoch ended; {run.last_checkpoint} is unchanged"
        else:
            stop.note = f"training stopped before its first epoch ended; no checkpoint was written in {run.path}"
            if "train_config" in done:
                run.update(train=TrainSection(config=done["train_config"], history=[], epochs_done=0,
                                              stopped=f"by {stop.signal_name} before its first epoch ended; no "
                                                      "checkpoint was written"))
        raise


STEM_PREFIXES = ("conv1", "bn1", "layer1")  # timm ResNet-family names of the stem and first stage


def freeze_backbone(model: torch.nn.Module, *, frozen_bn: bool, frozen_stem: bool) -> list[torch.nn.Module]:
    """What a recipe keeps fixed in the backbone: ``frozen_stem`` stops training its stem and first stage,
    ``frozen_bn`` its BatchNorm affine parameters; returns the BatchNorm layers to keep in eval mode (their running
    statistics then stay the pretrained ones, as with FrozenBatchNorm2d)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return []
    if frozen_stem:
        for name, param in backbone.named_parameters():
            if name.startswith(STEM_PREFIXES):
                param.requires_grad_(False)
    norms = [module for module in backbone.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if not frozen_bn:
        return []
    for norm in norms:
        for param in norm.parameters():
            param.requires_grad_(False)
    return norms


def stage_plan(model, epochs: int, mode: str) -> list[str | None]:
    """The stage of each epoch: none (``None``: end to end); the model's ``concurrent_stage`` throughout; or its
    ``training_stages`` in order, the epochs split evenly (the earlier stages get the rest)."""
    if mode == "none":
        return [None] * epochs
    stages = list(model.training_stages)
    if not stages:
        raise MlicError(f"--stages {mode}: {model.model_name} is not trained in stages", hint="drop --stages")
    if mode == "concurrent":
        return [model.concurrent_stage] * epochs
    if epochs < len(stages):
        raise MlicError(f"--stages sequential needs at least {len(stages)} epochs ({', '.join(stages)})",
                        hint=f"pass --epochs {len(stages)} or more")
    share, rest = divmod(epochs, len(stages))
    return [stage for index, stage in enumerate(stages) for _ in range(share + (index < rest))]


def prepare_label_graph(run: RunDir, train_set, vectors_path: str | None, trust_pickle: bool = False):
    """Word vectors + co-occurrence of the training split, saved to the run as label_graph.npz."""
    from mlic_edge.label_vectors import label_graph_for

    graph, warning = label_graph_for(train_set.names, train_set.targets, vectors_path, trust_pickle=trust_pickle)
    if warning:
        warn(warning)
    with run.transaction() as change:
        graph.save(change.path(run.path / "label_graph.npz"))
        change.update(label_graph=LabelGraphSection(file="label_graph.npz", vectors_source=graph.vectors_source,
                                                    vectors_dim=int(graph.vectors.shape[1]), warning=warning))
    return graph


def _sampler(name: str, train_images: ImageDataset, seed: int, dist: DistContext):
    """The training sampler: None (the loader shuffles) for one random-order process; each rank's share under DDP."""
    if name == "class-aware":
        from mlic_edge.train.samplers import ClassAwareSampler

        return ClassAwareSampler(train_images.dataset.targets, seed=seed, num_replicas=dist.world_size,
                                 rank=dist.rank)
    if dist.enabled:
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(train_images, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
    return None


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
