"""Train HyperCT (the paper's protocol by default; see ``hyperct.training.config``).

Per epoch: a permutation of the training volumes and one random *available* task per volume
(label != -1) are drawn from (seed, epoch) alone, so the data order does not depend on earlier
RNG use, on resuming or on the number of processes. Each global batch of ``train.batch_size``
volumes is split over the ranks (rank r takes positions r, r + N, ...); the loss is the batch
mean of the BCE of each volume's logit for its drawn task. The learning rate is set every step
from (epoch, step) by the schedule. After each epoch (every ``valid_every``), every validation
volume is scored for every finding it has labels for, and the AUC per finding and their mean
(over findings with both classes in the validation set) are computed; the epoch with the best
mean AUC is written to ``best/``.

``train`` runs named stages: the run folder (``_run_folder``), the data and task masks
(``_load_data``), the model and optimiser (``_model_and_optimiser``), restore (``_restore``), then
per epoch one epoch of training (``_train_epoch``), validate (``_validate``) and save
(``_save_epoch``), in this order (the random stream depends on it).

Run folder: ``config.yaml`` (resolved configuration), ``log.jsonl`` (one JSON line per epoch),
``best/`` (a checkpoint folder, ``hyperct.checkpoint``), ``last/`` (resume state,
``hyperct.training.state``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hyperct.atomic import replace_file
from hyperct.device import autocast_for, default_task_chunk, resolve_device
from hyperct.errors import ConfigError, DatasetError
from hyperct.findings import catalogue
from hyperct.jsonable import jsonable
from hyperct.training import distributed as D
from hyperct.training.cache import PreprocessCache
from hyperct.training.config import ScheduleSection, TrainConfig, dump_config
from hyperct.training.datasets import IndexedPixels, VolumeDataset, build_dataset
from hyperct.training.embedding_cache import EmbeddingCache
from hyperct.training.image_stride import step_rng, strided_images
from hyperct.training.metrics import macro_auc, roc_auc
from hyperct.training.progress import progress_bar
from hyperct.training.state import load_state, save_state

RUN_FILES = ("config.yaml", "log.jsonl", "best", "last")


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_metric: float | None
    log: list[dict] = field(default_factory=list)
    model: torch.nn.Module | None = None  # the model after the last epoch (this rank's copy)


# --- pieces ------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - for third-party code using the global state
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig | dict):
    """A fresh HyperCT as the configuration describes (deterministic given ``seed``)."""
    from hyperct.network import HyperCT, HyperCTConfig
    from hyperct.network.backbone import build_backbone, config_to_dict, load_backbone

    cfg = TrainConfig.coerce(cfg)
    mc = cfg.model
    if mc.backbone_weights:
        backbone = load_backbone(mc.backbone_weights)
        spec = config_to_dict(backbone.config)
    else:
        backbone = build_backbone(mc.backbone, seed=cfg.seed)
        spec = mc.backbone if isinstance(mc.backbone, str) else dict(mc.backbone)
    hc = HyperCTConfig(
        backbone=spec,
        task_dim=mc.task_dim,
        pos_dim=mc.pos_dim,
        hyper_hidden=mc.hyper_hidden,
        rank=mc.rank,
        alpha=float(mc.alpha),
        targets=list(mc.targets),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        model = HyperCT(hc, backbone=backbone)
    model.set_backbone_trainable(bool(mc.train_backbone))
    # DINOv3's mask token only serves masked-image pre-training: it never gets a gradient here
    # (and DistributedDataParallel refuses parameters without one).
    mask_token = getattr(model.backbone.embeddings, "mask_token", None)
    if isinstance(mask_token, torch.nn.Parameter):
        mask_token.requires_grad_(False)
    return model


def lr_factor(
    sched: ScheduleSection | dict, epoch: int, step: int, steps_per_epoch: int, epochs: int
) -> float:
    """Multiplier of the base learning rate at ``step`` of ``epoch`` (both 0-based).

    ``sched``: the ``schedule`` section (a mapping may leave fields out: they keep their defaults).
    """
    if not isinstance(sched, ScheduleSection):
        sched = ScheduleSection.from_dict(sched)
    t = epoch + step / max(steps_per_epoch, 1)  # epochs done so far
    warm = float(sched.warmup_epochs or 0.0)
    f_warm = 1.0
    if warm > 0 and t < warm:
        start = float(sched.warmup_start)
        f_warm = start + (1.0 - start) * t / warm
    if sched.name == "step":
        main = float(sched.gamma) ** (epoch // int(sched.step_size))
    elif sched.name == "cosine":
        span = max(epochs - warm, 1e-9)
        progress = min(max((t - warm) / span, 0.0), 1.0)
        floor = float(sched.min_factor)
        main = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        main = 1.0
    return f_warm * main


def epoch_plan(
    seed: int,
    epoch: int,
    available: np.ndarray,
    positive: np.ndarray | None = None,
    positive_draw: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(volume order, drawn task per position) for one epoch, from (seed, epoch) only.

    ``available`` (N, 25) bool: the tasks each volume may be trained on. Volumes without any are
    left out. The paper's draw (default) is uniform over a volume's available tasks. With
    ``positive`` (N, 25) bool (the volume's positive findings among the available ones) and
    ``positive_draw`` p > 0 (``train.task_draw: positive``), a volume with positive findings draws
    one of them with probability p (uniformly), otherwise uniformly over all its available tasks, so
    each finding is trained on more of its positives than the ~prevalence share the uniform draw
    gives. The extra random numbers come from a separate stream: p = 0 gives the paper's plan.
    """
    usable = np.flatnonzero(available.any(axis=1))
    rng = np.random.default_rng([int(seed), int(epoch), 0x48C7])
    order = usable[rng.permutation(usable.size)]
    u = rng.random(order.size)
    tasks = np.empty(order.size, dtype=np.int64)
    for pos, idx in enumerate(order):
        options = np.flatnonzero(available[idx])
        tasks[pos] = options[min(int(u[pos] * options.size), options.size - 1)]
    if positive is not None and positive_draw > 0:
        rng_pos = np.random.default_rng([int(seed), int(epoch), 0xB05])
        coin, pick = rng_pos.random(order.size), rng_pos.random(order.size)
        for pos, idx in enumerate(order):
            options = np.flatnonzero(positive[idx] & available[idx])
            if options.size and coin[pos] < positive_draw:
                tasks[pos] = options[min(int(pick[pos] * options.size), options.size - 1)]
    return order, tasks


def rank_batches(n: int, batch_size: int, rank: int, world: int) -> list[tuple[list[int], float]]:
    """Per global batch: this rank's plan positions and the global batch size.

    A rank without a sample in a (last, short) batch gets the batch's first position with weight 0
    so that every rank still takes part in the gradient all-reduce.
    """
    out = []
    for start in range(0, n, batch_size):
        positions = list(range(start, min(start + batch_size, n)))
        mine = positions[rank::world]
        out.append((mine if mine else [-1 - positions[0]], float(len(positions))))
    return out


class _PlanDataset(torch.utils.data.Dataset):
    """Items of an epoch plan: (pixels, label of the drawn task, task, weight); with
    ``pixels=False`` the volume's index in place of its pixels (``EmbeddingCache`` has its tokens)."""

    def __init__(self, data: VolumeDataset, order: np.ndarray, tasks: np.ndarray, pixels: bool = True):
        self.data, self.order, self.tasks, self.pixels = data, order, tasks, pixels

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, pos: int):
        weight = 1.0
        if pos < 0:  # padding item (see rank_batches)
            pos, weight = -1 - pos, 0.0
        idx = int(self.order[pos])
        pixels = self.data.pixel_values(idx) if self.pixels else torch.tensor(idx)
        task = int(self.tasks[pos])
        label = float(self.data.labels[idx, task])
        return pixels, torch.tensor(label), torch.tensor(task), torch.tensor(weight)


def _loader(ds, batch_sampler, workers: int, seed: int):
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        ds, batch_sampler=batch_sampler, num_workers=workers, generator=g, persistent_workers=False
    )


@torch.inference_mode()
def score_dataset(
    model,
    data: VolumeDataset,
    tasks: list[int],
    *,
    device: torch.device,
    amp: str = "auto",
    batch_size: int = 8,
    task_chunk: int | None = None,
    workers: int = 0,
    dist: D.DistInfo | None = None,
    desc: str = "validate",
) -> np.ndarray:
    """Logits (len(data), len(tasks)) for every volume (sharded over ranks, gathered on all)."""
    dist = dist or D.DistInfo()
    model.eval()
    chunk = task_chunk or default_task_chunk(device, model, batch_size)
    mine = list(range(len(data)))[dist.rank :: dist.world]
    batches = [list(range(s, min(s + batch_size, len(mine)))) for s in range(0, len(mine), batch_size)]
    out_idx, out_logits = [], []
    task_t = torch.as_tensor(tasks, dtype=torch.long)
    loader = _loader(IndexedPixels(data, mine), batches, workers, 0)
    for pixels, idx in progress_bar(
        loader, desc=desc, total=len(batches), unit="batch", enabled=dist.is_main
    ):
        with autocast_for(device, amp):
            logits = model(pixels.to(device), task_t, task_chunk=chunk)
        out_idx.append(idx.numpy())
        out_logits.append(logits.float().cpu().numpy().reshape(len(idx), len(tasks)))
    local = (
        np.concatenate(out_idx) if out_idx else np.zeros(0, np.int64),
        np.concatenate(out_logits) if out_logits else np.zeros((0, len(tasks)), np.float32),
    )
    result = np.full((len(data), len(tasks)), np.nan, dtype=np.float32)
    for idx, lg in D.gather_objects(dist, local):
        result[idx] = lg
    return result


def validation_metrics(labels: np.ndarray, logits: np.ndarray, tasks: list[int]) -> dict:
    ids = catalogue().ids
    aucs, losses = {}, []
    for j, k in enumerate(tasks):
        y = labels[:, k]
        keep = (y == 0) | (y == 1)
        aucs[ids[k]] = roc_auc(y[keep], logits[keep, j])
        if keep.any():
            lg = torch.from_numpy(logits[keep, j].astype(np.float32))
            losses.append(
                F.binary_cross_entropy_with_logits(
                    lg, torch.from_numpy(y[keep].astype(np.float32)), reduction="none"
                )
            )
    loss = float(torch.cat(losses).mean()) if losses else float("nan")
    return {"val_auc": aucs, "val_mean_auc": macro_auc(list(aucs.values())), "val_loss": loss}


# --- the run folder ----------------------------------------------------------------------------


def _prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (run_dir / "last" / "state.json").is_file():
            raise ConfigError(
                "cannot resume: no last/state.json in the run folder",
                path=run_dir,
                hint="resume a folder written by `hyperct train` after at least one epoch",
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        ours = [run_dir / n for n in RUN_FILES if (run_dir / n).exists()]
        if not overwrite:
            raise ConfigError(
                "the run folder already exists and is not empty",
                path=run_dir,
                hint="choose a new --out folder, pass --overwrite to replace the run, or --resume it",
            )
        for p in ours:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def _run_folder(run_dir: Path, dist: D.DistInfo, *, resume: bool, overwrite: bool) -> None:
    """Stage 1, the run folder: rank 0 checks and prepares it, the other ranks learn the outcome."""
    problem = None
    if dist.is_main:
        try:
            _prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        except ConfigError as exc:
            problem = str(exc)
    problem = D.broadcast_object(dist, problem)
    if problem:
        raise ConfigError(problem)


def _read_log(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [e for e in lines if int(e.get("epoch", 0)) <= upto_epoch]


def _write_log(path: Path, entries: list[dict]) -> None:
    replace_file(path, "".join(json.dumps(e) + "\n" for e in entries))


# --- the data and the task masks -----------------------------------------------------------------


@dataclass
class _Data:
    """What training reads: the datasets, which tasks each training volume may draw, which
    findings are validated, and their description for the manifest."""

    train: VolumeDataset
    valid: VolumeDataset | None
    available: np.ndarray  # (N, 25) bool: labelled (0/1) and among data.tasks
    val_tasks: list[int]  # findings with both classes in the validation data
    desc: dict


def _datasets(cfg: TrainConfig, dist: D.DistInfo, source: str | None):
    """``data.train`` / ``data.valid`` built from their descriptions (through the cache)."""
    dc = cfg.data
    cache = PreprocessCache(dc.cache_dir, dc.cache_dtype) if dc.cache_dir else None
    if not dc.train:
        raise ConfigError("data.train: required (a dataset description)", path=source)

    def make(key):
        spec = getattr(dc, key)
        if not spec:
            return None
        return build_dataset(
            spec,
            cache=cache,
            field=f"data.{key}",
            source=source,
            rank=dist.rank,
            world=dist.world,
            barrier=lambda: D.barrier(dist),
            progress=dist.is_main,
            workers=max(1, int(dc.prepare_workers)),
        )

    return make("train"), make("valid"), cache


def _load_data(
    cfg: TrainConfig,
    datasets: tuple[VolumeDataset, VolumeDataset | None] | None,
    dist: D.DistInfo,
    source: str | None,
) -> _Data:
    """Stage 2, data and task masks."""
    cache = None
    if datasets is not None:
        train_ds, valid_ds = datasets
        if cfg.data.cache_dir:
            cache = PreprocessCache(cfg.data.cache_dir, cfg.data.cache_dtype)
    else:
        train_ds, valid_ds, cache = _datasets(cfg, dist, source)
    mask = np.zeros(len(catalogue()), dtype=bool)
    mask[catalogue().indices(cfg.data.tasks)] = True
    available = ((train_ds.labels == 0) | (train_ds.labels == 1)) & mask[None, :]
    if not available.any():
        raise DatasetError(
            "the training data have no labels for the findings being trained", path=train_ds.source
        )
    val_tasks: list[int] = []
    if valid_ds is not None:
        for k in np.flatnonzero(mask):
            y = valid_ds.labels[:, k]
            if (y == 1).any() and (y == 0).any():
                val_tasks.append(int(k))
        if not val_tasks:
            raise DatasetError(
                "the validation data have no finding with both positive and negative labels: AUC is undefined",
                path=valid_ds.source,
                hint="use a larger validation set, or set data.valid: null to keep the last epoch",
            )
    desc = {"train": train_ds.describe()}
    if valid_ds is not None:
        desc["valid"] = valid_ds.describe()
    if cache is not None:
        desc["cache"] = cache.describe()
    desc["tasks"] = cfg.data.tasks or "all labelled"
    return _Data(train_ds, valid_ds, available, val_tasks, desc)


# --- the model and the optimiser -----------------------------------------------------------------


@dataclass
class _Trainable:
    """The model, its trained parameters (and their names, for the resume state) and AdamW."""

    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    param_names: list[str]
    optimizer: torch.optim.Optimizer
    backbone_sha: str | None  # of the external backbone weights it was built on (frozen ones only)


def _model_and_optimiser(cfg: TrainConfig, device: torch.device) -> _Trainable:
    """Stage 3, model and optimiser (the model's initialisation is drawn from ``seed``)."""
    from hyperct.checkpoint import sha256_file

    mc, oc = cfg.model, cfg.optim
    model = build_model(cfg).to(device)
    backbone_sha = None
    if mc.backbone_weights and not mc.train_backbone:
        backbone_sha = sha256_file(Path(mc.backbone_weights) / "model.safetensors")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(
        params,
        lr=oc.lr,
        betas=tuple(oc.betas),
        eps=oc.eps,
        weight_decay=oc.weight_decay,
        foreach=False,
    )
    return _Trainable(model, params, [n for n, _ in named], optimizer, backbone_sha)


def _embedding_cache(cfg: TrainConfig, model, data: _Data, source: str | None) -> EmbeddingCache | None:
    """``train.embedding_cache``: the input stage of each training volume kept in memory (frozen
    backbones only: a trained one changes its embedding every step)."""
    kind = cfg.train.embedding_cache
    if kind == "off":
        return None
    if cfg.model.train_backbone:
        raise ConfigError(
            "train.embedding_cache needs a frozen backbone: model.train_backbone is true",
            path=source,
            hint="set train.embedding_cache: off, or model.train_backbone: false",
        )
    cache = EmbeddingCache(model, data.train, kind)
    cache.check_fits()
    return cache


# --- where the run stands: restore -------------------------------------------------------------


@dataclass
class _Progress:
    """Where the run stands after ``start_epoch`` epochs (saved in ``last/state.json``)."""

    start_epoch: int = 0
    global_step: int = 0
    best_epoch: int | None = None
    best_metric: float = -math.inf
    best_val: dict | None = None
    log: list[dict] = field(default_factory=list)

    def record(self, epoch: int, val: dict | None, validated_data: bool) -> bool:
        """Keep ``epoch`` (1-based) as the best one if it is; returns whether it is. Without
        validation data every epoch is the best so far (``best/`` is the last epoch)."""
        improved = (not validated_data) or (val is not None and val["val_mean_auc"] > self.best_metric)
        if improved:
            self.best_epoch, self.best_val = epoch, val
            if val is not None:
                self.best_metric = val["val_mean_auc"]
        return improved


def _restore(
    run_dir: Path, run: _Trainable, cfg: TrainConfig, dist: D.DistInfo, echo: Callable[[str], None]
) -> _Progress:
    """Stage 4, restore: weights, AdamW moments and RNG states from ``last/``; the log up to there."""
    doc = load_state(
        run_dir / "last",
        run.model,
        run.optimizer,
        run.param_names,
        include_backbone=bool(cfg.model.train_backbone),
    )
    if int(doc.get("world_size", 1)) != dist.world:
        echo(f"note: resuming a {doc.get('world_size')}-process run with {dist.world} processes")
    best_metric = doc.get("best_metric")
    state = _Progress(
        start_epoch=int(doc["epoch"]),
        global_step=int(doc["global_step"]),
        best_epoch=doc.get("best_epoch"),
        best_metric=-math.inf if best_metric is None else float(best_metric),
        best_val=doc.get("best_val"),
    )
    state.log = _read_log(run_dir / "log.jsonl", state.start_epoch)
    if dist.is_main:
        _write_log(run_dir / "log.jsonl", state.log)
    return state


# --- one epoch ---------------------------------------------------------------------------------


def _train_epoch(
    net,
    run: _Trainable,
    data: _Data,
    cfg: TrainConfig,
    epoch: int,
    state: _Progress,
    device: torch.device,
    dist: D.DistInfo,
    tokens: EmbeddingCache | None = None,
) -> dict:
    """Stage 5, one epoch: the epoch's plan, then one optimiser step per global batch. Returns the
    log entry's training part (loss, lr, samples, steps); advances ``state.global_step``."""
    tc, oc = cfg.train, cfg.optim
    epochs = int(tc.epochs)
    positive_draw = tc.task_draw == "positive"
    order, tasks = epoch_plan(
        cfg.seed,
        epoch,
        data.available,
        positive=(data.train.labels == 1) if positive_draw else None,
        positive_draw=float(tc.positive_draw) if positive_draw else 0.0,
    )
    batches = rank_batches(len(order), int(tc.batch_size), dist.rank, dist.world)
    if tc.max_batches:
        batches = batches[: tc.max_batches]
    steps = len(batches)
    loader = _loader(
        _PlanDataset(data.train, order, tasks, pixels=tokens is None),
        [b for b, _ in batches],
        cfg.data.num_workers,
        cfg.seed + epoch,
    )
    run.model.train()
    loss_sum = torch.zeros(2, dtype=torch.float64)
    bar = progress_bar(
        loader, desc=f"epoch {epoch + 1}/{epochs}", total=steps, unit="batch", enabled=dist.is_main
    )
    lr = oc.lr
    for step, (batch, (_, n_global)) in enumerate(zip(bar, batches)):
        lr = oc.lr * lr_factor(cfg.schedule, epoch, step, steps, epochs)
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        run.optimizer.zero_grad(set_to_none=True)
        if tokens is not None:
            batch = (tokens.batch(batch[0]), *batch[1:])
        if tc.image_stride > 1:
            images = strided_images(batch[0], tc.image_stride, step_rng(cfg.seed, epoch, step))
            batch = (images, *batch[1:])
        _accumulate(
            net,
            batch,
            tc.micro_batch,
            dist.world / n_global,
            loss_sum,
            device,
            tc.amp,
            dist,
            tokens is not None,
        )
        if oc.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.params, oc.grad_clip)
        run.optimizer.step()
        state.global_step += 1
        if dist.is_main and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss_sum[0] / max(loss_sum[1], 1):.4f}", lr=f"{lr:.2e}", refresh=False)
    D.all_reduce_sum(dist, loss_sum)
    return {
        "epoch": epoch + 1,
        "train_loss": float(loss_sum[0] / max(float(loss_sum[1]), 1.0)),
        "lr": lr,
        "samples": int(loss_sum[1]),
        "steps": steps,
        "global_step": state.global_step,
    }


def _accumulate(net, batch, micro_batch, scale, loss_sum, device, amp, dist, embedded=False) -> None:
    """Gradients of one global batch's weighted BCE (this rank's share), ``micro_batch`` samples per
    forward/backward (DDP synchronises on the last one); adds (loss sum, weight sum) to ``loss_sum``.
    ``embedded``: the batch holds input-stage tokens (``EmbeddingCache``), not pixels."""
    pixels, y, t, w = batch
    mb = micro_batch or len(y)
    chunks = list(range(0, len(y), mb))
    for ci, s in enumerate(chunks):
        sync = contextlib.nullcontext()
        if dist.enabled and ci < len(chunks) - 1:
            sync = net.no_sync()
        with sync:
            with autocast_for(device, amp):
                logits = net(
                    pixels[s : s + mb].to(device), t[s : s + mb].to(device), paired=True, embedded=embedded
                )
            bce = F.binary_cross_entropy_with_logits(
                logits.float(), y[s : s + mb].to(device), reduction="none"
            )
            wt = w[s : s + mb].to(device)
            (bce * wt).sum().mul(scale).backward()
        loss_sum[0] += float((bce.detach() * wt).sum())
        loss_sum[1] += float(wt.sum())


# --- validate ------------------------------------------------------------------------------------


def _validate(
    model, data: _Data, cfg: TrainConfig, epoch: int, device: torch.device, dist: D.DistInfo
) -> dict | None:
    """Stage 6, validate: the AUC per finding, their mean and the loss after ``epoch`` (0-based)
    when it is a validation epoch (every ``valid_every`` and the last), else None."""
    tc = cfg.train
    last_epoch = epoch + 1 == tc.epochs
    if data.valid is None or not ((epoch + 1) % tc.valid_every == 0 or last_epoch):
        return None
    logits = score_dataset(
        model,
        data.valid,
        data.val_tasks,
        device=device,
        amp=tc.amp,
        batch_size=tc.valid_batch_size,
        task_chunk=tc.task_chunk,
        workers=cfg.data.num_workers,
        dist=dist,
        desc=f"validate {epoch + 1}/{tc.epochs}",
    )
    return validation_metrics(data.valid.labels, logits, data.val_tasks)


# --- save ------------------------------------------------------------------------------------


def _manifest(model, cfg: TrainConfig, *, epoch, val, data_desc, dist, device, backbone_sha):
    from hyperct.checkpoint import build_manifest

    mc = cfg.model
    external = bool(mc.backbone_weights) and not mc.train_backbone and not mc.include_backbone
    if mc.backbone_weights:
        source = f"DINOv3 weights from {mc.backbone_weights}" + (
            " (fine-tuned during training)" if mc.train_backbone else ""
        )
    else:
        name = mc.backbone if isinstance(mc.backbone, str) else "custom"
        source = f"random initialisation of the '{name}' configuration (seed {cfg.seed})" + (
            ", trained with the hypernetwork" if mc.train_backbone else ", frozen"
        )
    if mc.backbone_source:
        source = mc.backbone_source
    training = {
        "protocol": "HyperCT paper Sec. 4.2 (one random available task per volume, BCE, best epoch by validation mean AUC)",
        "seed": cfg.seed,
        "epochs": cfg.train.epochs,
        "best_epoch": epoch,
        "batch_size": cfg.train.batch_size,
        "optimizer": cfg.optim.to_dict(),
        "schedule": cfg.schedule.to_dict(),
        "backbone_trained": bool(mc.train_backbone),
        "world_size": dist.world,
        "device": str(device),
        "amp": cfg.train.amp,
        "torch": torch.__version__,
        "data": data_desc,
        "config": cfg.to_dict(),
    }
    metrics = {}
    if val:
        metrics = {
            "validation": {
                "epoch": epoch,
                "mean_auc": val["val_mean_auc"],
                "loss": val["val_loss"],
                "auc": val["val_auc"],
                "n": data_desc.get("valid", {}).get("n"),
            },
            "summary": {"validation_mean_auc": val["val_mean_auc"], "best_epoch": epoch},
        }
    train_d = data_desc.get("train", {})
    text = f"train: {train_d.get('source')} ({train_d.get('n')} volumes)"
    if "valid" in data_desc:
        text += f"; validation: {data_desc['valid'].get('source')} ({data_desc['valid'].get('n')} volumes)"
    extra = {"demo": True} if mc.demo else None
    return build_manifest(
        model,
        model_name=mc.name,
        model_version=str(mc.version),
        backbone_weights="external" if external else "included",
        backbone_source=source,
        training=jsonable(training),
        training_data=text,
        metrics=jsonable(metrics),
        backbone_sha256=backbone_sha,
        extra=extra,
    )


def _save_epoch(
    run_dir: Path,
    run: _Trainable,
    cfg: TrainConfig,
    data: _Data,
    state: _Progress,
    entry: dict,
    val: dict | None,
    *,
    improved: bool,
    steps: int,
    dist: D.DistInfo,
    device: torch.device,
) -> None:
    """Stage 7, save (rank 0): ``best/`` when the epoch improved, the log line, ``last/``."""
    from hyperct.checkpoint import save_checkpoint

    epoch, epochs, lr = entry["epoch"], int(cfg.train.epochs), entry["lr"]
    if improved:
        manifest = _manifest(
            run.model,
            cfg,
            epoch=epoch,
            val=val,
            data_desc=data.desc,
            dist=dist,
            device=device,
            backbone_sha=run.backbone_sha,
        )
        save_checkpoint(
            run.model,
            run_dir / "best",
            manifest,
            overwrite=True,
            extra_files={"config.yaml": dump_config(cfg)},
        )
    state.log.append(jsonable(entry))
    _write_log(run_dir / "log.jsonl", state.log)
    save_state(
        run_dir / "last",
        run.model,
        run.optimizer,
        run.param_names,
        include_backbone=bool(cfg.model.train_backbone),
        state={
            "epoch": epoch,
            "global_step": state.global_step,
            "best_epoch": state.best_epoch,
            "best_metric": state.best_metric if math.isfinite(state.best_metric) else None,
            "best_val": jsonable(state.best_val),
            "scheduler": {
                "name": cfg.schedule.name,
                "epoch": epoch,
                "last_lr": lr,
                "factor_next_epoch": lr_factor(cfg.schedule, epoch, 0, steps, epochs),
            },
            "world_size": dist.world,
            "torch_threads": torch.get_num_threads(),
            "saved": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
        },
    )


# --- the run -----------------------------------------------------------------------------------


def _echo_default(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _epoch_message(entry: dict, val: dict | None, epochs: int, improved: bool) -> str:
    msg = f"epoch {entry['epoch']}/{epochs}: loss {entry['train_loss']:.4f}  lr {entry['lr']:.2e}"
    if val:
        msg += f"  val mean AUC {val['val_mean_auc']:.4f}  val loss {val['val_loss']:.4f}"
    return msg + f"  {entry['seconds']:.0f} s" + ("  (best)" if improved else "")


def train(
    cfg: TrainConfig | dict,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    config_source: str | None = None,
    datasets: tuple[VolumeDataset, VolumeDataset | None] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    echo: Callable[[str], None] | None = _echo_default,
) -> TrainResult:
    """Run (or resume) training as ``cfg`` describes; returns where the results are.

    ``cfg``: a ``TrainConfig`` or its mapping (validated here). ``datasets`` replaces
    ``data.train``/``data.valid`` (tests, custom data); ``on_epoch_end(entry)`` is called on every
    rank after an epoch is logged and saved (raise in it to stop, e.g. to simulate an interruption).

    Stages: the run folder, the data and task masks, the model and optimiser, restore (``resume``),
    then per epoch: one epoch of training, validate, save.
    """
    echo = echo or (lambda _m: None)
    cfg = TrainConfig.coerce(cfg, source=config_source)
    run_dir = Path(run_dir or cfg.output_dir or "")
    if not str(run_dir) or str(run_dir) == ".":
        raise ConfigError(
            "no run folder: set output_dir in the configuration or pass --out DIR", path=config_source
        )
    tc, mc = cfg.train, cfg.model
    if mc.backbone_weights is None and mc.backbone == "vitb16" and not mc.train_backbone:
        echo(
            "warning: a randomly initialised, frozen ViT-B/16 backbone: set model.backbone_weights to a DINOv3 folder"
        )

    device = resolve_device(tc.device)
    dist = D.init_distributed(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    try:
        if tc.batch_size < dist.world:
            raise ConfigError(
                f"train.batch_size ({tc.batch_size}) is smaller than the number of processes ({dist.world})",
                path=config_source,
            )
        _run_folder(run_dir, dist, resume=resume, overwrite=overwrite)
        seed_everything(cfg.seed)
        data = _load_data(cfg, datasets, dist, config_source)
        run = _model_and_optimiser(cfg, device)
        state = _restore(run_dir, run, cfg, dist, echo) if resume else _Progress()
        if dist.is_main:
            (run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        tokens = _embedding_cache(cfg, run.model, data, config_source)
        net = run.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(run.model, device_ids=[device.index] if device.type == "cuda" else None)

        epochs = int(tc.epochs)
        if dist.is_main:
            counts = run.model.parameter_counts()
            echo(
                f"training {counts['trainable']:,} of {counts['total']:,} parameters on {device}"
                + (f" x{dist.world} processes" if dist.enabled else "")
                + f"; {len(data.train)} training volumes"
                + (
                    f", {len(data.valid)} validation volumes ({len(data.val_tasks)} findings)"
                    if data.valid is not None
                    else ""
                )
                + f"; epochs {state.start_epoch + 1}..{epochs}"
            )
        for epoch in range(state.start_epoch, epochs):
            t0 = time.perf_counter()
            entry = _train_epoch(net, run, data, cfg, epoch, state, device, dist, tokens)
            if tokens is not None:
                entry["embedding_cache_mb"] = round(tokens.nbytes / 2**20, 1)
            train_seconds = time.perf_counter() - t0
            val = _validate(run.model, data, cfg, epoch, device, dist)
            if val is not None:
                entry.update(val)
            improved = state.record(epoch + 1, val, validated_data=data.valid is not None)
            entry["best"] = bool(improved)
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            entry["train_seconds"] = round(train_seconds, 3)
            entry["samples_per_s"] = round(entry["samples"] / max(train_seconds, 1e-9), 3)
            run.model.train()
            if dist.is_main:
                _save_epoch(
                    run_dir,
                    run,
                    cfg,
                    data,
                    state,
                    entry,
                    val,
                    improved=improved,
                    steps=entry["steps"],
                    dist=dist,
                    device=device,
                )
                echo(_epoch_message(entry, val, epochs, improved))
            D.barrier(dist)
            if on_epoch_end is not None:
                on_epoch_end(entry)
        best = state.best_metric
        return TrainResult(
            run_dir=run_dir,
            epochs_done=epochs,
            best_epoch=state.best_epoch,
            best_metric=best if best is not None and math.isfinite(best) else None,
            log=state.log,
            model=run.model,
        )
    finally:
        D.shutdown(dist)
