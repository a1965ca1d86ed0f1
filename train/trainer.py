"""The training loop: BCE-family loss, SGD/AdamW, warm-up + cosine/step, AMP on CUDA, validation mAP each epoch,
best checkpoint, resume. Writes the run directory (checkpoint.pt, last.pt, run.json, reports/train_log.csv).

Under ``torchrun`` (train/distributed.py) the same loop runs as DistributedDataParallel: each rank trains on its
share of the data (``--batch-size`` is per process), validation is sharded and gathered back into dataset order (so
the val mAP is the single-process one of the same weights), and rank 0 alone writes the run directory."""

from __future__ import annotations

import contextlib
import csv
import math
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from rich.markup import escape
from timm.utils import ModelEmaV3

from mlic_edge import metrics
from mlic_edge.console import describe_duration, info, progress_bar, warn
from mlic_edge.data import open_dataset
from mlic_edge.data.torch_data import ImageDataset, cut_mix, describe_broken, make_loader
from mlic_edge.errors import Interrupted, MlicError, NonFiniteError
from mlic_edge.models import create_model, get_model_entry
from mlic_edge.models.backbone import backbone_data_config, locate_pretrained_weights
from mlic_edge.models.checkpoint import load_weights, read_training_state, save_checkpoint
from mlic_edge.models.recipe import stage_mode
from mlic_edge.plot import line_chart
from mlic_edge.rundir import RunDir
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
    entry = get_model_entry(config.model)
    run = RunDir(config.out)
    device = dist.device
    seed_everything(config.seed)
    # Where the ImageNet weights come from is settled before datasets are read or files moved: without network
    # and without a local copy, training stops here with one line.
    pretrained_file = config.pretrained_file
    if config.starts_pretrained() and not config.resume and pretrained_file is None:
        pretrained_file = locate_pretrained_weights(config.backbone or entry.default_backbone)

    if dist.is_main:
        info(f"reading {escape(config.data)}…")
    train_set = open_dataset(config.data, role="train", split=config.train_split, difficult=config.difficult)
    eval_set = open_dataset(config.data, role="eval", split=config.eval_split, difficult=config.difficult)
    if eval_set.names != train_set.names:
        raise MlicError("train and eval splits have different classes", hint="check the dataset's class list")
    for note in train_set.notes + eval_set.notes:
        warn(note)

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
                                "resume": True, "workers": config.workers, "device": config.device,
                                "sync_bn": config.sync_bn, "amp": config.amp, "channels_last": config.channels_last,
                                "compile": config.compile, "trust_pickle": config.trust_pickle})
    elif dist.is_main:
        run.start_new_generation(config.overwrite, making="training afresh into it",
                                 other_ways="--resume to continue it, ")
    dist.barrier()  # a refusal on rank 0 (an exported run without --overwrite) ends the run before any rank trains

    recipe = config.resolve(entry.recipes)
    starts_pretrained = config.starts_pretrained() or resume_state is not None
    if config.recipe == "paper" and not starts_pretrained:
        warn("training from scratch (--no-pretrained): the paper's figures assume an ImageNet-pretrained backbone, "
             "so expect a far lower mAP than the paper's")
    if (recipe.frozen_bn or recipe.frozen_stem) and not starts_pretrained:
        # Freezing keeps pretrained statistics and low-level filters; frozen random ones would never learn.
        info(f"recipe {config.recipe!r} freezes the backbone's BatchNorm and stem, meant for pretrained weights: "
             "training from scratch, they train (pass --pretrained to freeze them)")
        recipe = replace(recipe, frozen_bn=False, frozen_stem=False)
    img_size = recipe.img_size or entry.default_img_size
    backbone = config.backbone or entry.default_backbone
    if dist.is_main:
        info(f"building {config.model} ({backbone})…")
    label_graph = None
    if entry.needs_label_graph:  # counted once, by the rank that writes the run
        label_graph = dist.broadcast_object(
            prepare_label_graph(run, train_set, config.label_vectors, config.trust_pickle) if dist.is_main else None)
    fresh = resume_state is None  # a resumed run's weights come from last.pt
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
    lr = recipe.lr
    plan = stage_plan(model, recipe.epochs, recipe.stages)
    mean, std = recipe.mean or data_config["mean"], recipe.std or data_config["std"]
    train_images = ImageDataset(train_set, img_size, mean, std, augment=True,
                                crop_scale=(recipe.crop_scale, 1.0), resize=config.resize, extra=recipe.augment)
    sampler = _sampler(config.sampler, train_images, config.seed, dist)
    train_loader = make_loader(train_images, recipe.batch_size, shuffle=True, workers=config.workers,
                               seed=config.seed + dist.rank,
                               drop_last=len(train_set) // dist.world_size > recipe.batch_size, sampler=sampler)
    batches_per_epoch = max(1, len(train_loader))
    steps_per_epoch = math.ceil(batches_per_epoch / config.accumulate)  # optimizer steps
    step_model: torch.nn.Module = model

    def start_stage(epoch: int):
        """Optimizer and schedule over the epochs of the stage ``epoch`` is in (all epochs without stages)."""
        nonlocal step_model
        stage = plan[epoch]
        if stage is not None:
            model.set_training_stage(stage)
            info(f"stage [bold]{stage}[/bold] from epoch {epoch + 1}")
        step_model = _TrainingLoss(model)
        if dist.enabled:  # wrapped after the stage has set which parameters train
            step_model = torch.nn.parallel.DistributedDataParallel(
                step_model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=stage is not None)
        if config.compile:  # after DDP's wrapping, as PyTorch's DDP + compile guide does (DDPOptimizer splits it)
            step_model = torch.compile(step_model)
        stage_epochs = plan.count(stage)
        opt = create_optimizer(model, recipe.optimizer, lr, recipe.weight_decay,
                               backbone_lr_scale=recipe.backbone_lr_scale)
        return opt, create_scheduler(opt, stage_epochs * steps_per_epoch,
                                     int(recipe.warmup_epochs * steps_per_epoch), recipe.schedule)

    optimizer, scheduler = start_stage(0)
    amp_dtype = autocast_dtype(config.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # bf16 needs no loss scaling

    start_epoch, best_map, history = 0, -1.0, []
    if resume_state is not None:
        load_weights(model, resume_state["state_dict"], run.last_checkpoint)
        optimizer, scheduler = start_stage(resume_state["epoch"] - 1)  # the stage the saved optimizer belongs to
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        start_epoch, best_map, history = resume_state["epoch"], resume_state["best_map"], resume_state["history"]
        if ema is not None and "ema" in resume_state:
            ema.module.load_state_dict(resume_state["ema"])
        if start_epoch >= recipe.epochs:
            raise MlicError(f"{run.last_checkpoint} already finished {start_epoch} epochs",
                            hint="pass a larger --epochs to train longer")
        info(f"resuming {run.path} at epoch {start_epoch + 1}/{recipe.epochs}")

    train_config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    resolved = {k: v for k, v in recipe.as_dict().items() if k != "source" and k in train_config}
    train_config.update(resolved, img_size=img_size, backbone=backbone,  # a resume trains with what ran
                        pretrained=config.starts_pretrained())
    distributed = {"world_size": dist.world_size} if dist.enabled else {}
    if dist.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
        run.update(
            model=config.model, backbone=backbone, img_size=img_size, mean=list(mean), std=list(std),
            resize=config.resize, labels=train_set.names, model_config=model.config(),
            recipe={"name": config.recipe, **recipe.as_dict()},
            dataset={"spec": train_set.spec, "format": train_set.format, "train_split": train_set.split,
                     "eval_split": eval_set.split, "difficult": config.difficult,
                     "train_images": len(train_set), "eval_images": len(eval_set),
                     "train_class_counts": train_set.class_counts().tolist()},
        )
        done["train_config"] = train_config  # run.json now describes this training; a stop says how far it got
        info(f"training [bold]{config.model}[/bold] ({backbone}, {img_size}px) on {train_set.spec}: "
             f"{len(train_set)} train / {len(eval_set)} eval images, {train_set.num_classes} classes, device {device}"
             + (f", {dist.world_size} processes" if dist.enabled else ""))

    broken_train: list[int] = []
    started = time.monotonic()
    done.update(epochs=recipe.epochs, history=history)
    with progress_bar() as progress, train_loader:
        for epoch in range(start_epoch, recipe.epochs):
            if epoch > 0 and plan[epoch] != plan[epoch - 1]:
                optimizer, scheduler = start_stage(epoch)
            model.train()
            for norm in frozen_norms:  # FrozenBatchNorm: the statistics stay the pretrained ones
                norm.eval()
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            if hasattr(loss_fn, "set_epoch"):  # losses with a schedule over training (DAB's φ)
                loss_fn.set_epoch(epoch, recipe.epochs)
            task = progress.add_task(f"epoch {epoch + 1}/{recipe.epochs}", total=batches_per_epoch, status="")
            running, seen, epoch_started = 0.0, 0, time.monotonic()
            optimizer.zero_grad(set_to_none=True)
            first_batch = epoch == start_epoch and dist.is_main  # the slowest: workers start, memory is allocated
            if first_batch:
                info(f"epoch {epoch + 1}/{recipe.epochs}: first batch… (of {batches_per_epoch}, "
                     f"{recipe.batch_size} images each at {img_size} px)")
            for batch_number, batch in enumerate(train_loader, start=1):
                broken_train.extend(batch.broken)
                if len(batch.indices) == 0:
                    progress.advance(task)
                    continue
                images = batch.images.to(device, non_blocking=True,
                                         memory_format=memory_format or torch.contiguous_format)
                targets = batch.targets.to(device, non_blocking=True)
                if "cutmix" in recipe.augment:
                    images, targets = cut_mix(images, targets)
                steps_now = batch_number % config.accumulate == 0 or batch_number == batches_per_epoch
                # Under DDP, gradients are all-reduced only on the batch that steps the optimizer.
                with (contextlib.nullcontext() if steps_now or not dist.enabled else step_model.no_sync()):
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        loss = step_model(images, targets, loss_fn)
                    if not torch.isfinite(loss):
                        raise MlicError(f"loss became {loss.item()} at epoch {epoch + 1}",
                                        hint="lower --lr or use a warm-up (--warmup-epochs)")
                    scaler.scale(loss / config.accumulate).backward()
                if steps_now:
                    if recipe.grad_clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    if ema is not None:
                        ema.update(model)
                running += loss.item() * len(batch.indices)
                seen += len(batch.indices)
                progress.update(task, advance=1,
                                status=f"loss {running / seen:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                                       f"{seen / max(time.monotonic() - epoch_started, 1e-9):.1f} img/s")
                if first_batch:
                    first_batch = False
                    info(first_batch_pace(time.monotonic() - epoch_started, batches_per_epoch))
            images_per_s = seen / max(time.monotonic() - epoch_started, 1e-9)  # training, this process, with loading
            running, seen = dist.sum(running, seen)  # the loss over every rank's images
            val_task = progress.add_task("  validate", total=len(eval_set), status="")
            candidates = {"raw": model} if ema is None else {"raw": model, "ema": ema.module}
            for network in candidates.values():
                dist.broadcast_buffers(network)
            val_maps, scores_of = {}, {}
            for weights, network in candidates.items():
                scores_of[weights] = _validation_scores(
                    dist, network, eval_set, img_size, mean, std, recipe.batch_size,
                    config.workers, device, on_batch=lambda n: progress.advance(val_task, n / len(candidates)),
                    resize=config.resize)
                try:
                    val_maps[weights] = metrics.mean_average_precision(
                        scores_of[weights].scores, scores_of[weights].targets(eval_set)).map
                except NonFiniteError:  # a NaN or inf score: no mAP this epoch, so never the best checkpoint
                    val_maps[weights] = math.nan
            split_scores = scores_of["raw"]
            better = max(val_maps, key=lambda name: val_maps[name] if math.isfinite(val_maps[name]) else -1.0)
            train_loss = running / max(1, seen)
            progress.update(task, status=f"loss {train_loss:.4f} val mAP {val_maps['raw'] * 100:.2f}%"
                            + (f" (EMA {val_maps['ema'] * 100:.2f}%)" if ema is not None else ""))
            progress.remove_task(val_task)
            history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_mAP": _finite(val_maps["raw"]),
                            **({"val_mAP_ema": _finite(val_maps["ema"])} if ema is not None else {}),
                            "lr": scheduler.get_last_lr()[0], "train_images_per_s": round(images_per_s, 2),
                            "elapsed_s": round(time.monotonic() - started, 1)})
            is_best = math.isfinite(val_maps[better]) and val_maps[better] > best_map
            if is_best:
                best_map = val_maps[better]
            if not dist.is_main:
                continue
            # The epoch's files and run.json's train section are put in place together: a stop leaves the last
            # complete epoch, resumable from last.pt. checkpoint.pt holds the better of the raw and EMA weights.
            with run.transaction() as change:
                if is_best:
                    save_checkpoint(change.path(run.checkpoint), candidates[better], epoch=epoch + 1,
                                    val_mAP=best_map, weights=better)
                save_checkpoint(change.path(run.last_checkpoint), model, epoch=epoch + 1, best_map=best_map,
                                history=history, optimizer=optimizer.state_dict(),
                                scheduler=scheduler.state_dict(), train_config=train_config,
                                **({"ema": ema.module.state_dict()} if ema is not None else {}))
                _write_log(change.path(run.reports / "train_log.csv"), history)
                change.update(train=_train_section(train_config, history, device, **distributed))
            line_chart(run.reports / "training_curves.png", f"{config.model} ({backbone})",
                       [row["epoch"] for row in history],
                       {"train loss": [row["train_loss"] for row in history],
                        "val mAP": [row["val_mAP"] for row in history]})

    if broken_train:
        warn(describe_broken(train_set, broken_train) + " (training split)")
    if split_scores.broken:
        warn(describe_broken(eval_set, split_scores.broken) + " (eval split)")
    train_section = _train_section(train_config, history, device, **distributed, skipped_images={
        "train": len(set(broken_train)), "eval": len(set(split_scores.broken))})
    if dist.is_main:
        run.update(train=train_section)
    dist.barrier()  # every rank returns once the run directory is complete
    return train_section


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


def _train_section(train_config: dict[str, Any], history: list[dict[str, Any]], device, **extra: Any) -> dict:
    """run.json's train section after the epochs in ``history``; ``best_weights``: whether checkpoint.pt holds the
    raw or the EMA weights (the better of the two at the best epoch)."""
    def score(row: dict[str, Any], weights: str) -> float:
        value = row.get(f"val_mAP{'_ema' if weights == 'ema' else ''}")
        return value if value is not None else -1.0

    best_weights, best = max(((weights, row) for row in history for weights in ("raw", "ema")),
                             key=lambda pair: score(pair[1], pair[0]))
    return {"config": train_config, "history": history, "epochs_done": len(history), "best_epoch": best["epoch"],
            "best_val_mAP": best["val_mAP_ema" if best_weights == "ema" else "val_mAP"],
            "best_weights": best_weights, "device": str(device), **extra}


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
                run.update(train={"config": done["train_config"], "history": [], "epochs_done": 0,
                                  "stopped": f"by {stop.signal_name} before its first epoch ended; no checkpoint "
                                             "was written"})
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
        change.update(label_graph={"file": "label_graph.npz", "vectors_source": graph.vectors_source,
                                   "vectors_dim": int(graph.vectors.shape[1]), "warning": warning})
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
