"""Training configuration: the paper's protocol as defaults, YAML files, ``--set a.b=value`` overrides.

A configuration has two forms: the nested ``dict`` that ``config.yaml`` in a run folder holds, and
``TrainConfig``, dataclasses with one section per top-level key (``cfg.optim.lr``), built from the
dict and validated once (``TrainConfig.from_dict``); the trainer reads the typed form. The defaults
are the paper's protocol (Sec. 4.2: AdamW lr 1e-5, weight decay 0, 20 epochs, batch 8, lr x0.1 every
15 epochs, one random available task per sample, BCE, best epoch by validation mean AUC, frozen
DINOv3 ViT-B/16 backbone). ``load_config(path, overrides)`` merges a YAML file and command-line
overrides onto the defaults and validates every field (the dict form; ``load_train_config`` returns
the typed form); a bad field raises ``ConfigError`` naming the dotted field, then the file.

Fields (dotted name: default: meaning)

* ``seed``: 0: seeds the model initialisation, the data order and the task draws.
* ``output_dir``: null: the run folder (``hyperct train --out`` overrides).
* ``model.name`` / ``model.version``: "HyperCT" / "1.0": written into the checkpoint manifest.
* ``model.demo``: false: mark the checkpoint as a demo model (synthetic training data).
* ``model.backbone``: "vitb16": a named backbone configuration (``vitb16``, ``demo``) or a dict of
  DINOv3 config fields; used with random initialisation when ``backbone_weights`` is null.
* ``model.backbone_weights``: null: a local DINOv3 folder (``config.json`` + ``model.safetensors``);
  its ``config.json`` then defines the architecture.
* ``model.train_backbone``: false: train the backbone too (the paper does not).
* ``model.backbone_source``: null: how the manifest describes the backbone weights (default: derived
  from ``model.backbone_weights`` / ``model.backbone``).
* ``model.include_backbone``: false: store the backbone weights inside the checkpoint even when they
  come from ``model.backbone_weights`` and stay frozen (a self-contained checkpoint, e.g. the demo).
* ``model.rank`` / ``alpha`` / ``task_dim`` / ``pos_dim`` / ``hyper_hidden`` / ``targets``: the
  ``HyperCTConfig`` fields (paper: 16 / 16 / 512 / 64 / 64 / all six projections).
* ``data.train`` / ``data.valid``: dataset descriptions (see ``hyperct.training.datasets``):
  ``{type: manifest, csv: FILE}``, ``{type: ct-rate, root: DIR, split: train, labels: CSV,
  metadata: CSV}``, ``{type: phantom, count: N, first_seed: S, matrix: 256, findings: null}``.
  ``data.valid`` may be null: then no validation is run and ``best/`` is the last epoch.
* ``data.cache_dir``: null: preprocessing cache folder (strongly recommended for file datasets).
* ``data.cache_dtype``: "uint8": ``uint8`` (the [-1000, 1000] HU window in 255 steps of 7.8 HU) or
  ``float16`` (HU, 0.5 HU resolution near +-1000).
* ``data.num_workers``: 0: DataLoader worker processes.
* ``data.prepare_workers``: 1: processes that generate phantoms into the cache before training
  (phantom datasets with a ``cache_dir``; also ``hyperct train --prepare-only``).
* ``data.tasks``: null: restrict training and validation to these finding ids.
* ``optim.lr`` / ``weight_decay`` / ``betas`` / ``eps`` / ``grad_clip``: AdamW (grad_clip: max
  global gradient norm, null = off).
* ``schedule.name``: "step": ``step`` (StepLR per epoch: lr x ``gamma`` every ``step_size``
  epochs), ``cosine`` (per step, from lr down to ``lr * min_factor`` at the end), or ``constant``.
  ``schedule.warmup_epochs`` (float, default 0): linear warm-up from ``warmup_start`` x lr.
* ``train.epochs`` / ``train.batch_size``: 20 / 8. ``batch_size`` is the global batch: with N
  processes (torchrun) each one takes batch_size / N samples per step.
* ``train.micro_batch``: null: samples per forward/backward inside a batch (gradient accumulation
  with identical maths; smaller is faster on CPU and needs less memory). null = whole local batch.
* ``train.device``: "auto"; ``train.amp``: "auto" (bf16 autocast on CUDA) or "off".
* ``train.valid_every``: 1: validate every N epochs (and always after the last).
* ``train.valid_batch_size``: 8; ``train.task_chunk``: null: tasks per backbone pass in validation.
* ``train.max_batches``: null: stop each epoch after this many batches (smoke tests).
* ``train.task_draw``: "uniform": the paper's draw, one available task per volume uniformly;
  ``positive``: a volume with positive findings draws one of them with probability
  ``train.positive_draw`` (0.5), otherwise uniformly (balances each finding toward its positives).
* ``train.embedding_cache``: "off": ``float16`` / ``float32`` keep each training volume's frozen input
  stage (patch embedding) in memory after its first use, so later epochs skip reading the volume
  and embedding it (frozen backbones only; ~0.9 / 1.8 MB per volume with the demo backbone).
* ``train.image_stride``: 1: training reads every Nth image of each volume from a random offset
  (``hyperct.training.image_stride``: the mean CLS over 55 // N images, N times fewer backbone passes
  per sample); validation, evaluation and inference read all 55.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from hyperct.errors import ConfigError
from hyperct.preprocess import N_IMAGES

# --- checks of one value: None when it is valid, else what was expected -------------------------


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pos_int(v):
    return None if _int(v) and v > 0 else "a positive integer"


def _nonneg_int(v):
    return None if _int(v) and v >= 0 else "an integer >= 0"


def _image_stride(v):
    return (
        None
        if _int(v) and 1 <= v <= N_IMAGES
        else f"an integer from 1 to {N_IMAGES} (the images of a volume)"
    )


def _opt(check):
    return lambda v: None if v is None else check(v)


def _pos_num(v):
    return None if _num(v) and v > 0 else "a positive number"


def _nonneg_num(v):
    return None if _num(v) and v >= 0 else "a number >= 0"


def _unit(v):
    return None if _num(v) and 0 <= v <= 1 else "a number in [0, 1]"


def _bool(v):
    return None if isinstance(v, bool) else "true or false"


def _str(v):
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


class _choice:
    """One of ``options`` (strings). YAML 1.1 reads an unquoted ``off`` / ``on`` as a boolean:
    ``resolve`` turns such a boolean back into the word where the word is an option."""

    def __init__(self, *options):
        self.options = options

    def __call__(self, v):
        return None if v in self.options else f"one of {', '.join(map(str, self.options))}"


def _words_for_booleans(values: dict, section) -> None:
    """``amp: off`` (read as False) -> "off" for choice fields of ``section`` that offer the word."""
    if not isinstance(values, dict):
        return
    for f in dataclasses.fields(section):
        if f.name not in values:
            continue
        if _is_section(f):
            _words_for_booleans(values[f.name], f.default_factory)
            continue
        options = getattr(f.metadata.get("check"), "options", ())
        value = values[f.name]
        if isinstance(value, bool) and ("on" if value else "off") in options:
            values[f.name] = "on" if value else "off"


def _betas(v):
    ok = isinstance(v, list | tuple) and len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v)
    return None if ok else "a list of two numbers in [0, 1), e.g. [0.9, 0.999]"


def _targets(v):
    from hyperct.network.lora import LORA_TARGETS

    if not isinstance(v, list | tuple) or not v:
        return f"a non-empty list of {', '.join(LORA_TARGETS)}"
    bad = [t for t in v if t not in LORA_TARGETS]
    return f"a list of {', '.join(LORA_TARGETS)} (unknown: {', '.join(map(str, bad))})" if bad else None


def _backbone(v):
    from hyperct.network.backbone import BACKBONE_CONFIGS

    if isinstance(v, str):
        return None if v in BACKBONE_CONFIGS else f"one of {', '.join(BACKBONE_CONFIGS)} or a config mapping"
    return None if isinstance(v, dict) and v else f"one of {', '.join(BACKBONE_CONFIGS)} or a config mapping"


def _dataset(v):
    return (
        None
        if v is None or isinstance(v, dict)
        else "a mapping with a 'type' field (manifest, ct-rate, phantom)"
    )


def _tasks(v):
    from hyperct.findings import catalogue

    if v is None:
        return None
    if not isinstance(v, list | tuple) or not v:
        return "null or a non-empty list of finding ids"
    ids = catalogue().ids
    bad = [t for t in v if t not in ids]
    if bad:
        near = difflib.get_close_matches(str(bad[0]), ids, n=1)
        return f"a list of finding ids (unknown: {bad[0]!r}" + (
            f", did you mean {near[0]!r}?)" if near else ")"
        )
    return None


def _version(v):
    return None if isinstance(v, str | int | float) and str(v).strip() else "a version string"


def _even_pos_int(v):
    return None if _int(v) and v > 0 and v % 2 == 0 else "a positive even integer"


# --- the typed configuration -------------------------------------------------------------------


def _field(default: Any, check, *, free_form: bool = False):
    """A configuration field: its default, its check and whether its value is a free-form mapping
    (a dataset description, a backbone config) that the field's own consumer validates further."""
    meta = {"check": check, "free_form": free_form}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class _Section:
    """A group of fields (one top-level key of the YAML). Built and validated by ``from_dict``."""

    prefix: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, values: dict | None = None, *, source: str | None = None):
        """The section from a (possibly partial) mapping: missing fields keep their defaults, unknown
        fields and invalid values raise ``ConfigError`` (field name first, then ``source``)."""
        values = {} if values is None else values
        if not isinstance(values, dict):
            where = cls.prefix.rstrip(".") or "the configuration"
            raise ConfigError(f"{where}: expected a mapping of fields, got {values!r}", path=source)
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise _unknown(f"{cls.prefix}{key}", source)
        kwargs = {}
        for name, f in known.items():
            if _is_section(f):
                kwargs[name] = f.default_factory.from_dict(values.get(name), source=source)
                continue
            value = copy.deepcopy(values[name]) if name in values else _default(f)
            problem = f.metadata["check"](value)
            if problem:
                raise ConfigError(f"{cls.prefix}{name}: expected {problem}, got {value!r}", path=source)
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The mapping ``config.yaml`` holds (field order as declared)."""
        return {
            f.name: (
                getattr(self, f.name).to_dict() if _is_section(f) else copy.deepcopy(getattr(self, f.name))
            )
            for f in dataclasses.fields(self)
        }


def _is_section(f: dataclasses.Field) -> bool:
    return isinstance(f.default_factory, type) and issubclass(f.default_factory, _Section)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _section(cls):
    return dataclasses.field(default_factory=cls)


@dataclass
class ModelSection(_Section):
    """``model.*``: the architecture (``HyperCTConfig``), the backbone and the manifest's name."""

    prefix: ClassVar[str] = "model."
    name: str = _field("HyperCT", _str)
    version: str | int | float = _field("1.0", _version)
    demo: bool = _field(False, _bool)
    backbone: str | dict = _field("vitb16", _backbone, free_form=True)
    backbone_weights: str | None = _field(None, _opt(_str))
    train_backbone: bool = _field(False, _bool)
    include_backbone: bool = _field(False, _bool)
    backbone_source: str | None = _field(None, _opt(_str))
    rank: int = _field(16, _pos_int)
    alpha: float = _field(16.0, _pos_num)
    task_dim: int = _field(512, _pos_int)
    pos_dim: int = _field(64, _even_pos_int)
    hyper_hidden: int = _field(64, _pos_int)
    targets: list[str] = _field(["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"], _targets)


@dataclass
class DataSection(_Section):
    """``data.*``: the dataset descriptions (``hyperct.training.datasets``) and the cache."""

    prefix: ClassVar[str] = "data."
    train: dict | None = _field(None, _dataset, free_form=True)
    valid: dict | None = _field(None, _dataset, free_form=True)
    cache_dir: str | None = _field(None, _opt(_str))
    cache_dtype: str = _field("uint8", _choice("uint8", "float16"))
    num_workers: int = _field(0, _nonneg_int)
    prepare_workers: int = _field(1, _nonneg_int)
    tasks: list[str] | None = _field(None, _tasks)


@dataclass
class OptimSection(_Section):
    """``optim.*``: AdamW."""

    prefix: ClassVar[str] = "optim."
    name: str = _field("adamw", _choice("adamw"))
    lr: float = _field(1.0e-5, _pos_num)
    weight_decay: float = _field(0.0, _nonneg_num)
    betas: list[float] = _field([0.9, 0.999], _betas)
    eps: float = _field(1.0e-8, _pos_num)
    grad_clip: float | None = _field(None, _opt(_pos_num))


@dataclass
class ScheduleSection(_Section):
    """``schedule.*``: the learning-rate schedule (``hyperct.training.trainer.lr_factor``)."""

    prefix: ClassVar[str] = "schedule."
    name: str = _field("step", _choice("step", "cosine", "constant"))
    step_size: int = _field(15, _pos_int)
    gamma: float = _field(0.1, _pos_num)
    warmup_epochs: float = _field(0.0, _nonneg_num)
    warmup_start: float = _field(0.01, _unit)
    min_factor: float = _field(0.0, _unit)


@dataclass
class TrainSection(_Section):
    """``train.*``: epochs, batches, device, validation and the task draw."""

    prefix: ClassVar[str] = "train."
    epochs: int = _field(20, _pos_int)
    batch_size: int = _field(8, _pos_int)
    micro_batch: int | None = _field(None, _opt(_pos_int))
    device: str = _field("auto", _str)
    amp: str = _field("auto", _choice("auto", "off", "bf16"))
    valid_every: int = _field(1, _pos_int)
    valid_batch_size: int = _field(8, _pos_int)
    task_chunk: int | None = _field(None, _opt(_pos_int))
    max_batches: int | None = _field(None, _opt(_pos_int))
    task_draw: str = _field("uniform", _choice("uniform", "positive"))
    positive_draw: float = _field(0.5, _unit)
    embedding_cache: str = _field("off", _choice("off", "float16", "float32"))
    image_stride: int = _field(1, _image_stride)


@dataclass
class TrainConfig(_Section):
    """The whole training configuration, typed: ``cfg.seed``, ``cfg.optim.lr``, ``cfg.train.epochs`` ...

    ``TrainConfig.from_dict(mapping, source=FILE)`` validates every field once (missing fields keep
    the paper's defaults); ``to_dict()`` gives back the mapping ``config.yaml`` holds.
    """

    seed: int = _field(0, _nonneg_int)
    output_dir: str | None = _field(None, _opt(_str))
    model: ModelSection = _section(ModelSection)
    data: DataSection = _section(DataSection)
    optim: OptimSection = _section(OptimSection)
    schedule: ScheduleSection = _section(ScheduleSection)
    train: TrainSection = _section(TrainSection)

    @classmethod
    def coerce(cls, cfg: TrainConfig | dict, *, source: str | None = None) -> TrainConfig:
        """``cfg`` as a ``TrainConfig`` (a mapping is validated; a ``TrainConfig`` is returned as is)."""
        return cfg if isinstance(cfg, TrainConfig) else cls.from_dict(cfg, source=source)


def _leaf_fields(cls: type[_Section], prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted name, field) of every value field, in declaration order (sections expanded)."""
    out = []
    for f in dataclasses.fields(cls):
        if _is_section(f):
            out += _leaf_fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f))
    return out


_LEAVES = _leaf_fields(TrainConfig)
FIELDS: tuple[str, ...] = tuple(name for name, _ in _LEAVES)
CHECKS = {name: f.metadata["check"] for name, f in _LEAVES}
# Fields whose value is a free-form mapping (validated elsewhere) rather than a section of fields.
_FREE_FORM = {name for name, f in _LEAVES if f.metadata["free_form"]}
DEFAULTS: dict[str, Any] = TrainConfig().to_dict()


def default_config() -> dict:
    return copy.deepcopy(DEFAULTS)


def _unknown(field: str, source: str | None) -> ConfigError:
    near = difflib.get_close_matches(field, FIELDS, n=1, cutoff=0.6)
    hint = (
        f"did you mean {near[0]!r}?"
        if near
        else "`hyperct train --print-config` lists every field with its default"
    )
    return ConfigError(f"unknown configuration field {field!r}", path=source, hint=hint)


def _merge(base: dict, update: dict, source: str | None, prefix: str = "") -> None:
    for key, value in update.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str) or key not in base:
            raise _unknown(name, source)
        if isinstance(base[key], dict) and name not in _FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a mapping of fields, got {value!r}", path=source)
            _merge(base[key], value, source, name + ".")
        else:
            base[key] = copy.deepcopy(value)


def set_field(cfg: dict, dotted: str, value: Any, *, source: str | None = None) -> None:
    """Set ``a.b.c`` in ``cfg`` (free-form mappings such as ``data.train.csv`` may be extended)."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        name = ".".join(parts[: i + 1])
        if name in _FREE_FORM:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
            for sub in parts[i + 1 : -1]:
                node = node.setdefault(sub, {})
            node[parts[-1]] = value
            return
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise _unknown(dotted, source)
        node = node[part]
    if parts[-1] not in node:
        raise _unknown(dotted, source)
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``optim.lr=3e-4`` -> ("optim.lr", 0.0003). Values are parsed as YAML (numbers, lists, null...)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not FIELD=VALUE", hint="e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no field name", hint="e.g. --set optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from exc
    if isinstance(value, str):  # YAML reads 3e-4 as a string (no dot): accept plain numbers
        try:
            value = float(value) if any(c in value for c in "eE.") else int(value)
        except ValueError:
            pass
    return key, value


def _fix_numbers(tree: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-5`` as a string: turn such strings back into numbers."""
    if isinstance(tree, dict):
        return {k: _fix_numbers(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_fix_numbers(v) for v in tree]
    if isinstance(tree, str):
        s = tree.strip()
        if s and (s[0].isdigit() or s[0] in "+-.") and any(c in s for c in "eE"):
            try:
                return float(s)
            except ValueError:
                return tree
    return tree


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("configuration file does not exist", path=path, hint="pass --config FILE.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"not a readable YAML file ({exc})", path=path) from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping of fields, got {type(raw).__name__}", path=path)
    return _fix_numbers(raw)


def validate(cfg: dict, *, source: str | None = None) -> dict:
    """Check every field; returns ``cfg``. Raises ``ConfigError`` naming the first bad field."""
    TrainConfig.from_dict(cfg, source=source)
    return cfg


def resolve(
    file_cfg: dict | None = None,
    overrides: list[str] | dict | None = None,
    *,
    source: str | None = None,
    base: dict | None = None,
) -> dict:
    """Defaults (or ``base``) <- file mapping <- overrides, validated."""
    cfg = copy.deepcopy(base) if base is not None else default_config()
    if file_cfg:
        _merge(cfg, file_cfg, source)
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    for key, value in items:
        set_field(cfg, key, value, source="--set" if source is None else f"{source} (--set {key})")
    _words_for_booleans(cfg, TrainConfig)
    validate(cfg, source=source)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> dict:
    """Read a YAML configuration (None: defaults only), apply ``--set`` overrides, validate."""
    if path is None:
        return resolve(None, overrides)
    return resolve(read_yaml(path), overrides, source=str(path))


def load_train_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """``load_config`` in the typed form."""
    if path is None:
        return TrainConfig.from_dict(resolve(None, overrides))
    return TrainConfig.from_dict(resolve(read_yaml(path), overrides, source=str(path)), source=str(path))


def dump_config(cfg: dict | TrainConfig) -> str:
    if isinstance(cfg, TrainConfig):
        cfg = cfg.to_dict()
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
