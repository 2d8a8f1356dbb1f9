"""Stage-1 (backbone pretraining) configuration: defaults, YAML files, ``--set a.b=value`` overrides.

As for stage 2 (``hyperct.training.config``) a configuration has two forms: the nested mapping that
``pretrain_config.yaml`` in a run folder holds, and ``PretrainConfig``, dataclasses with one section
per top-level key (``cfg.optim.lr``), built from the mapping and validated once
(``PretrainConfig.from_dict``: every field, then the checks that involve several fields).
``hyperct.training.pretrain.pretrain_backbone`` reads the typed form. ``PretrainConfig.load(path,
overrides, sets)`` merges a YAML file, a mapping of overrides (``--epochs``, ``--init``) and
``--set`` items onto the defaults; ``load_pretrain_config`` returns the same as a mapping. A bad
field raises ``ConfigError`` naming the dotted field first, then the file.

Fields (dotted name: default: meaning)

* ``seed``: 0: seeds the backbone and head initialisation and every draw of images and bags.
* ``backbone``: "demo": a named backbone configuration or a mapping of DINOv3 config fields.
* ``init``: null: start from this backbone folder (``config.json`` + ``model.safetensors``).
* ``init_extra_layers``: 0: blocks appended to the ``init`` backbone, each starting as the identity
  (``hyperct.network.backbone.deepen_backbone``): a deeper network that starts where ``init`` is.
* ``init_patch_size``: 0: a smaller patch for the ``init`` backbone (0: keep its own), its kernel
  made from the trained one (``hyperct.network.backbone.repatch_backbone``): the trained network
  looking at the image magnified, with 4x the tokens at half the patch.
* ``init_hu_windows``: null: HU windows ``[[lo, hi], ...]`` added to the ``init`` backbone's patch
  embedding (``hyperct.network.windows.add_windows``: each input channel also given through each
  window/level ramp, with each ramp's patch maximum and mean; the new weights start at zero, so
  training starts where ``init`` is).
* ``device``: "cpu": ``auto`` (a CUDA GPU when present), ``cpu``, ``cuda`` or ``cuda:N``.
* ``data.train``: (required) a phantom dataset description (``hyperct.training.datasets``); with
  the bag objective it may have ``pair: normal | variant | drop_one``.
* ``data.valid``: null: the validation phantoms (null: no validation).
* ``data.cache_dir`` / ``cache_dtype`` / ``cache_compress``: null / "uint8" / false: the
  preprocessing cache (``cache_compress``: zlib-compressed entries).
* ``data.prepare_workers``: 1: processes that generate phantoms (and the next block of fresh seeds).
* ``data.fresh_seeds`` / ``block_epochs`` / ``keep_blocks``: false / 1 / true: train on blocks of
  ``data.train.count`` new seeds, each for ``block_epochs`` epochs; ``keep_blocks: false`` deletes
  a used block from the cache (fresh seeds need ``data.cache_dir``).
* ``optim.epochs`` / ``lr`` / ``weight_decay`` / ``warmup_steps`` / ``min_factor`` /
  ``grad_clip``: 4 / 1e-3 / 0.05 / 200 / 0.02 / 1.0: AdamW with linear warm-up, then cosine down to
  ``lr * min_factor`` (grad_clip: max global gradient norm, 0 or null = off).
* ``optim.embedding_lr_factor``: 1.0: the patch embedding's learning rate is ``lr`` times this (the
  same schedule): lets an HU window added to a trained run (``--add-hu-window``) grow at the rate
  the embedding had early on while the rest goes on at the late lr.
* ``optim.stem_lr_factor``: null: the same for the patch embedding's conv stem alone
  (``hyperct.network.conv_stem``; ``--add-conv-stem``); null: ``embedding_lr_factor``.
* ``optim.phantoms_per_step`` / ``images_per_phantom``: 2 / 24: phantoms per step and images drawn
  from each (without the bag objective).
* ``optim.token_pos_weight`` / ``image_pos_weight``: 4.0 / 2.0: positive weights of the BCE.
* ``optim.volume_loss_weight`` / ``volume_pos_weight``: 0.0 / 2.0: the volume objective (a head on
  the mean CLS of all 55 images; needs ``images_per_phantom: 55``).
* ``optim.loss`` / ``focal_gamma``: "bce" / 2.0: ``bce``, ``balanced`` or ``focal`` (per finding).
* ``optim.bag_loss_weight`` / ``bag_min`` / ``bag_max`` / ``positive_fraction``: 0.0 / 8 / 55 /
  0.5: the bag objective (a head on the mean CLS of a random bag of images; replaces the volume
  objective).
* ``optim.pair_loss_weight``: 0.0: the pair contrast (``data.train.pair: drop_one``): the phantom
  must score the finding its twin lacks higher than the twin, on that finding's tokens, images and
  on the bag (``hyperct.training.pretrain.pair_contrast_loss``).
* ``optim.heart_loss_weight``: 0.0: the heart-geometry objective (``hyperct.training.heart_geometry``):
  a head on each bag's mean CLS regresses the phantom's heart numbers (chamber sizes, wall, vessel
  calibres), standardised; needs the bag objective and phantom training data.
* ``optim.heart_slice_loss_weight``: 0.0: the per-image heart objective (``hyperct.training.
  heart_slices``): a head on each image's CLS regresses the mL of each heart chamber, the myocardium,
  the whole heart, the pulmonary artery and the IVC inside that image, standardised; needs phantom
  training data and whole images (``crop_size: 0``).
* ``optim.station_loss_weight``: 0.0: the per-image lymph-node-station objective (``hyperct.training.
  station_tissue``): a head on each image's CLS regresses the mL of soft tissue near each of the
  mediastinum's eight central lymph-node stations inside that image; needs phantom training data and
  whole images (``crop_size: 0``).
* ``optim.station_excess_loss_weight``: 0.0: the same per-image regression of the excess over the
  tissue expected at the image's z offset from each station (``station_tissue.station_excess_ml``: the
  station's normal level taken out, the amount left); same needs.
* ``optim.teacher_loss_weight`` / ``optim.teacher``: 0.0 / null: the teacher objective
  (``hyperct.training.teacher``): a head on each image's CLS regresses the features a small per-image
  CNN (the teacher folder ``optim.teacher`` names, ``benchmarks/reading_cnn_oracle.py --save``) gives
  that image, standardised; needs phantom training data and whole images (``crop_size: 0``).
* ``optim.token_max_loss_weight``: 0.0: the token-max objective (``hyperct.training.pretrain.
  token_max_loss``): each image's highest token logit, per finding, is scored against the image's
  label, so the highest-scoring token of an image without the finding is pushed down.
* ``optim.split_negatives``: false: in the token loss (``balanced`` / ``focal``), a finding's negative
  tokens that are positive for another finding weigh as much as all its other negatives together.
* ``optim.crop_size``: 0: train on square crops of this many pixels a side (0: whole images), on
  the token grid and placed on a finding where an image has one (``hyperct.training.crops``): a
  patch-8 backbone on 72-pixel crops costs what patch 16 costs on whole images. Validation stays on
  whole images.
* ``valid.phantoms``: 60: validation phantoms scored after every epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from hyperct.errors import ConfigError
from hyperct.preprocess import IMAGE_SIZE, N_IMAGES
from hyperct.training.cache import DTYPES
from hyperct.training.config import (
    _backbone,
    _bool,
    _choice,
    _dataset,
    _field,
    _is_section,
    _nonneg_int,
    _nonneg_num,
    _opt,
    _pos_int,
    _section,
    _str,
    _unit,
    read_yaml,
)
from hyperct.training.config import _Section as _TrainSection

LOSSES = ("bce", "balanced", "focal")
CONFIG_FILE = "pretrain_config.yaml"  # the configuration a run folder was started with


def _hu_windows(v):
    from hyperct.network.windows import check_windows

    if v is None:
        return None
    try:
        check_windows(v)
    except ValueError as exc:
        return f"null or a list of [lo, hi] HU pairs ({exc})"
    return None if v else "null or a non-empty list of [lo, hi] HU pairs"


def _at_least_one(v):
    return None if _pos_int(v) is None else "an integer >= 1"


class _Section(_TrainSection):
    """A section of the pretraining configuration: an unknown field is named with the allowed ones."""

    @classmethod
    def from_dict(cls, values: dict | None = None, *, source: str | None = None):
        if isinstance(values, dict):
            for key in values:
                check_known(cls, key, source)
        return super().from_dict(values, source=source)


def check_known(cls: type[_Section], key: Any, source: str | None) -> None:
    """``ConfigError`` (``<section>.<key>: unknown field (allowed: ...)``) unless ``key`` is a field."""
    allowed = [f.name for f in dataclasses.fields(cls)]
    if key in allowed:
        return
    near = difflib.get_close_matches(str(key), allowed, n=1)
    raise ConfigError(
        f"{cls.prefix}{key}: unknown field (allowed: {', '.join(allowed)})",
        path=source,
        hint=f"did you mean {cls.prefix}{near[0]}?" if near else None,
    )


@dataclass
class PretrainData(_Section):
    """``data.*``: the training and validation phantoms, the cache and the blocks of fresh seeds."""

    prefix: ClassVar[str] = "data."
    train: dict | None = _field(None, _dataset, free_form=True)
    valid: dict | None = _field(None, _dataset, free_form=True)
    cache_dir: str | None = _field(None, _opt(_str))
    cache_dtype: str = _field("uint8", _choice(*DTYPES))
    cache_compress: bool = _field(False, _bool)
    prepare_workers: int = _field(1, _nonneg_int)
    fresh_seeds: bool = _field(False, _bool)
    block_epochs: int = _field(1, _at_least_one)
    keep_blocks: bool = _field(True, _bool)


@dataclass
class PretrainOptim(_Section):
    """``optim.*``: AdamW, the schedule, the batch and the objectives."""

    prefix: ClassVar[str] = "optim."
    epochs: int = _field(4, _pos_int)
    lr: float = _field(1.0e-3, _nonneg_num)
    weight_decay: float = _field(0.05, _nonneg_num)
    embedding_lr_factor: float = _field(1.0, _nonneg_num)
    stem_lr_factor: float | None = _field(None, _opt(_nonneg_num))
    warmup_steps: int = _field(200, _nonneg_int)
    min_factor: float = _field(0.02, _unit)
    grad_clip: float | None = _field(1.0, _opt(_nonneg_num))
    phantoms_per_step: int = _field(2, _pos_int)
    images_per_phantom: int = _field(24, _pos_int)
    token_pos_weight: float = _field(4.0, _nonneg_num)
    image_pos_weight: float = _field(2.0, _nonneg_num)
    volume_loss_weight: float = _field(0.0, _nonneg_num)
    volume_pos_weight: float = _field(2.0, _nonneg_num)
    loss: str = _field("bce", _choice(*LOSSES))
    focal_gamma: float = _field(2.0, _nonneg_num)
    bag_loss_weight: float = _field(0.0, _nonneg_num)
    bag_min: int = _field(8, _pos_int)
    bag_max: int = _field(N_IMAGES, _pos_int)
    positive_fraction: float = _field(0.5, _unit)
    pair_loss_weight: float = _field(0.0, _nonneg_num)
    heart_loss_weight: float = _field(0.0, _nonneg_num)
    heart_slice_loss_weight: float = _field(0.0, _nonneg_num)
    station_loss_weight: float = _field(0.0, _nonneg_num)
    station_excess_loss_weight: float = _field(0.0, _nonneg_num)
    teacher_loss_weight: float = _field(0.0, _nonneg_num)
    teacher: str | None = _field(None, _opt(_str))
    token_max_loss_weight: float = _field(0.0, _nonneg_num)
    split_negatives: bool = _field(False, _bool)
    crop_size: int = _field(0, _nonneg_int)

    @property
    def volume(self) -> bool:
        """The volume objective is on."""
        return float(self.volume_loss_weight) > 0

    @property
    def bag(self) -> bool:
        """The bag objective is on."""
        return float(self.bag_loss_weight) > 0


@dataclass
class PretrainValid(_Section):
    """``valid.*``: validation after every epoch."""

    prefix: ClassVar[str] = "valid."
    phantoms: int = _field(60, _pos_int)


@dataclass
class PretrainConfig(_Section):
    """The whole pretraining configuration, typed: ``cfg.seed``, ``cfg.optim.lr``, ``cfg.data.train`` ...

    ``PretrainConfig.from_dict(mapping, source=FILE)`` validates every field and the checks across
    fields once (missing fields keep their defaults); ``to_dict()`` gives back the mapping
    ``pretrain_config.yaml`` holds (same fields, same order).
    """

    seed: int = _field(0, _nonneg_int)
    backbone: str | dict = _field("demo", _backbone, free_form=True)
    init: str | None = _field(None, _opt(_str))
    init_extra_layers: int = _field(0, _nonneg_int)
    init_patch_size: int = _field(0, _nonneg_int)
    init_hu_windows: list | None = _field(None, _hu_windows, free_form=True)
    device: str = _field("cpu", _str)
    data: PretrainData = _section(PretrainData)
    optim: PretrainOptim = _section(PretrainOptim)
    valid: PretrainValid = _section(PretrainValid)

    @classmethod
    def from_dict(cls, values: dict | None = None, *, source: str | None = None) -> PretrainConfig:
        cfg = super().from_dict(values, source=source)
        cfg.check(source)
        return cfg

    @classmethod
    def coerce(cls, cfg: PretrainConfig | dict, *, source: str | None = None) -> PretrainConfig:
        """``cfg`` as a ``PretrainConfig`` (a mapping is validated; a ``PretrainConfig`` is returned as is)."""
        return cfg if isinstance(cfg, PretrainConfig) else cls.from_dict(cfg, source=source)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        overrides: dict | None = None,
        sets: list[str] | None = None,
    ) -> PretrainConfig:
        """The defaults, updated by the YAML file ``path`` (None: none), then by ``overrides`` (a
        mapping: a section's fields are updated one by one, other values replaced), then by the
        ``--set FIELD=VALUE`` items; validated once. Errors name the field, then ``path``."""
        source = None if path is None else str(path)
        cfg = copy.deepcopy(DEFAULTS)
        for update in (read_yaml(path) if path else {}, overrides or {}):
            _merge(cfg, update, source)
        _apply_sets(cfg, sets, source)
        return cls.from_dict(cfg, source=source)

    def check(self, source: str | None = None) -> None:
        """The checks that involve several fields (``ConfigError`` naming the first field)."""
        if self.init_extra_layers and not self.init:
            raise ConfigError(
                "init_extra_layers: blocks are appended to an init backbone; set init to its folder",
                path=source,
            )
        if self.init_hu_windows and not self.init:
            raise ConfigError(
                "init_hu_windows: the windows are added to an init backbone; set init to its folder "
                "(a backbone from scratch takes them in backbone: {base: demo, hu_windows: [...]})",
                path=source,
            )
        if self.init_patch_size and not self.init:
            raise ConfigError(
                "init_patch_size: the smaller patch is made from an init backbone; set init to its folder",
                path=source,
            )
        oc, dc = self.optim, self.data
        if not isinstance(dc.train, dict) or dc.train.get("type") != "phantom":
            raise ConfigError(
                "data.train: backbone pretraining needs a phantom dataset (finding masks)", path=source
            )
        if oc.volume and oc.images_per_phantom != N_IMAGES:
            raise ConfigError(
                f"optim.volume_loss_weight: the volume objective pools all {N_IMAGES} images of a "
                f"phantom; set optim.images_per_phantom to {N_IMAGES} (it is {oc.images_per_phantom})",
                path=source,
            )
        if oc.bag:
            if oc.volume:
                raise ConfigError(
                    "optim.bag_loss_weight: the bag objective replaces the volume objective; set "
                    "optim.volume_loss_weight to 0",
                    path=source,
                )
            if not 1 <= oc.bag_min <= oc.bag_max <= N_IMAGES:
                raise ConfigError(
                    f"optim.bag_min/bag_max: expected 1 <= bag_min <= bag_max <= {N_IMAGES}, "
                    f"got {oc.bag_min}, {oc.bag_max}",
                    path=source,
                )
        if dc.train.get("pair") and not oc.bag:
            raise ConfigError(
                "data.train.pair: paired phantoms are used by the bag objective (set optim.bag_loss_weight > 0)",
                path=source,
            )
        if float(oc.pair_loss_weight) > 0 and dc.train.get("pair") != "drop_one":
            raise ConfigError(
                "optim.pair_loss_weight: the pair contrast needs twins that lack one finding "
                f"(data.train.pair: drop_one; it is {dc.train.get('pair')!r})",
                path=source,
            )
        if float(oc.heart_loss_weight) > 0 and not (oc.bag and dc.train.get("type") == "phantom"):
            raise ConfigError(
                "optim.heart_loss_weight: the heart-geometry objective reads the bags' mean CLS of "
                "phantoms (set optim.bag_loss_weight > 0 and data.train.type: phantom)",
                path=source,
            )
        if float(oc.heart_slice_loss_weight) > 0 and (dc.train.get("type") != "phantom" or oc.crop_size):
            raise ConfigError(
                "optim.heart_slice_loss_weight: the per-image heart objective needs each whole image's "
                "heart from the phantom generator (set data.train.type: phantom and optim.crop_size: 0)",
                path=source,
            )
        if float(oc.teacher_loss_weight) > 0 and (
            not oc.teacher or dc.train.get("type") != "phantom" or oc.crop_size
        ):
            raise ConfigError(
                "optim.teacher_loss_weight: the teacher objective needs the teacher's folder (optim.teacher) "
                "and each whole phantom image (set data.train.type: phantom and optim.crop_size: 0)",
                path=source,
            )
        for name in ("station_loss_weight", "station_excess_loss_weight"):
            if float(getattr(oc, name)) > 0 and (dc.train.get("type") != "phantom" or oc.crop_size):
                raise ConfigError(
                    f"optim.{name}: the per-image station objective needs each whole image and the "
                    "phantom generator's lymph-node stations (set data.train.type: phantom and "
                    "optim.crop_size: 0)",
                    path=source,
                )
        if oc.split_negatives and oc.loss == "bce":
            raise ConfigError(
                "optim.split_negatives: the split weighs the balanced loss's negatives; plain bce has "
                "no such half (set optim.loss: balanced or focal)",
                path=source,
            )
        if oc.crop_size and not (oc.crop_size % 8 == 0 and oc.crop_size <= IMAGE_SIZE):
            raise ConfigError(
                f"optim.crop_size: {oc.crop_size} pixels; a crop is 0 (whole images) or a multiple of the "
                f"patch (8 or 16) up to {IMAGE_SIZE}",
                path=source,
            )
        if dc.fresh_seeds and not dc.cache_dir:
            raise ConfigError(
                "data.fresh_seeds: needs data.cache_dir (blocks are generated into it in the background)",
                path=source,
            )

    def dump(self) -> str:
        """``pretrain_config.yaml``'s text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


DEFAULTS: dict[str, Any] = PretrainConfig().to_dict()
_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(PretrainConfig) if _is_section(f)}


def _merge(cfg: dict, update: dict, source: str | None) -> None:
    """``update`` onto the full mapping ``cfg``: a section's fields one by one, other values replaced."""
    if not isinstance(update, dict):
        raise ConfigError(f"expected a mapping of fields, got {update!r}", path=source)
    for key, value in update.items():
        check_known(PretrainConfig, key, source)
        if key in _SECTIONS and isinstance(value, dict):
            for sub in value:
                check_known(_SECTIONS[key], sub, source)
            cfg[key].update(copy.deepcopy(value))
        else:
            cfg[key] = copy.deepcopy(value)


def _apply_sets(cfg: dict, items: list[str] | None, source: str | None) -> None:
    """``--set a.b=value`` items (the value read as YAML) on the full mapping ``cfg``: the field must
    exist (inside ``data.train`` / ``data.valid`` any dataset field; ``build_dataset`` checks them)."""
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--set {item!r}: expected FIELD=VALUE, e.g. data.prepare_workers=4", path=source
            )
        parts = key.split(".")
        node = cfg
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"--set {key}: unknown field", path=source)
            node = node[part]
        free = len(parts) == 3 and parts[0] == "data" and parts[1] in ("train", "valid")
        if parts[-1] not in node and not free:
            raise ConfigError(f"--set {key}: unknown field", path=source)
        value = yaml.safe_load(text)
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 as text
            try:
                value = float(value)
            except ValueError:
                pass
        node[parts[-1]] = value


def load_pretrain_config(
    path: str | Path | None, overrides: dict | None = None, sets: list[str] | None = None
) -> dict:
    """``PretrainConfig.load`` as the mapping ``pretrain_config.yaml`` holds (validated)."""
    return PretrainConfig.load(path, overrides, sets).to_dict()
