"""A checkpoint folder is untrusted input (issue 15): each class of damage gives a CheckpointError
(exit status 3 in the CLI), fast, before anything is allocated from the manifest's numbers."""

from __future__ import annotations

import json
import math
import os
import shutil
import time

import pytest
import torch
from safetensors.torch import save_file

import hyperct.checkpoint as ckpt_mod
from hyperct.checkpoint import build_manifest, load_checkpoint, save_checkpoint, sha256_file
from hyperct.errors import CheckpointError
from tests.support.models import save_tiny_checkpoint, tiny_model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_checkpoint(
        tmp_path_factory.mktemp("base") / "ckpt",
        seed=3,
        model_name="test",
        model_version="1",
        backbone_source="tiny random backbone",
    )


@pytest.fixture
def ckpt(base, tmp_path):
    return shutil.copytree(base, tmp_path / "ckpt")


def _raw(folder):
    return json.loads((folder / "manifest.json").read_text())


def _write(folder, raw):
    (folder / "manifest.json").write_text(json.dumps(raw))


def _set(raw, dotted, value):
    *parents, last = dotted.split(".")
    d = raw
    for p in parents:
        d = d[p]
    d[last] = value
    return raw


def _rewrite_weights(folder, change):
    """Rewrite model.safetensors with ``change(tensors)`` applied; the manifest's sha256 follows."""
    from safetensors import safe_open

    w = folder / "model.safetensors"
    with safe_open(str(w), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    save_file(tensors, str(w))
    _write(folder, dict(_raw(folder), weights_sha256=sha256_file(w)))


@pytest.fixture
def no_real_build(monkeypatch):
    """Fail the test if a real (non-meta) backbone or model is built."""
    real_build, real_model = ckpt_mod.build_backbone, ckpt_mod.HyperCT

    def guard(real):
        def wrapped(*a, **k):
            if torch.get_default_device().type != "meta":
                pytest.fail("a model was built before the manifest was validated")
            return real(*a, **k)

        return wrapped

    monkeypatch.setattr(ckpt_mod, "build_backbone", guard(real_build))
    monkeypatch.setattr(ckpt_mod, "HyperCT", guard(real_model))
    import hyperct.network.backbone as backbone_mod

    monkeypatch.setattr(backbone_mod, "build_backbone", guard(backbone_mod.build_backbone))  # load_backbone


# --- the manifest's own shape -------------------------------------------------------------------

NOT_OBJECTS = {
    "list": b"[1, 2, 3]",
    "string": b'"hyperct-checkpoint"',
    "number": b"7",
    "null": b"null",
    "deeply nested list": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'{"format": "hyperct-checkpoint", "model_name": "\xff\xfe"}',
    "UTF-16": json.dumps({"format": "hyperct-checkpoint"}).encode("utf-16"),
    "huge integer": b'{"format_version": ' + b"9" * 5000 + b"}",
}


@pytest.mark.parametrize("content", NOT_OBJECTS.values(), ids=list(NOT_OBJECTS))
def test_manifest_that_is_not_a_json_object_is_a_checkpoint_error(ckpt, content):
    (ckpt / "manifest.json").write_bytes(content)
    with pytest.raises(CheckpointError, match="manifest.json"):
        load_checkpoint(ckpt)


def test_deeply_nested_field_is_refused(ckpt):
    deep: list = []
    for _ in range(200):
        deep = [deep]
    _write(ckpt, dict(_raw(ckpt), training={"notes": deep}))
    with pytest.raises(CheckpointError, match="nested deeper"):
        load_checkpoint(ckpt)


WRONG_TYPES = [
    ("format_version", "1"),
    ("format_version", [1]),
    ("findings", 25),
    ("findings", "medical_material"),
    ("architecture", ["rank", 4]),
    ("architecture.backbone", 48),
    ("architecture.rank", "4"),
    ("architecture.alpha", "4"),
    ("architecture.targets", "q_proj"),
    ("architecture.targets", ["q_proj", "no_such_module"]),
    ("architecture.backbone.hidden_act", ["gelu"]),
    ("architecture.backbone.hidden_act", "no_such_activation"),
    ("architecture.backbone.query_bias", "yes"),
    ("architecture.backbone.layer_norm_eps", "1e-5"),
    ("architecture.backbone.output_hidden_states", True),
    ("backbone", "included"),
    ("backbone.weights", ["included"]),
    ("backbone.sha256", 12),
    ("weights_sha256", {"sha": 1}),
    ("weights_file", ["model.safetensors"]),
    ("model_name", {"n": 1}),
    ("demo", "no"),
]


@pytest.mark.parametrize("field,value", WRONG_TYPES, ids=[f"{f}={v!r}" for f, v in WRONG_TYPES])
def test_fields_of_the_wrong_type_are_checkpoint_errors(ckpt, field, value):
    _write(ckpt, _set(_raw(ckpt), field, value))
    with pytest.raises(CheckpointError, match=field.split(".")[-1]):
        load_checkpoint(ckpt)


def test_cli_exits_with_the_model_error_status(ckpt, tmp_path, capsys):
    from hyperct.cli.common import EXIT_ERROR
    from hyperct.cli.main import main

    (ckpt / "manifest.json").write_text("[]")
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not read: the model fails first")
    assert main(["predict", str(scan), "--model", str(ckpt), "--device", "cpu"]) == EXIT_ERROR == 3
    err = capsys.readouterr().err
    assert "manifest.json" in err and "Traceback" not in err


# --- architecture: ranges, then the weights' shapes, before anything is built --------------------

ABSURD = [
    ("architecture.backbone.hidden_size", 99999),
    ("architecture.rank", 1e6),
    ("architecture.rank", 1_000_000),
    ("architecture.backbone.num_hidden_layers", 100_000),
    ("architecture.backbone.intermediate_size", 10**9),
    ("architecture.task_dim", 10**7),
    ("architecture.hyper_hidden", -1),
    ("architecture.n_tasks", 3),
    ("architecture.backbone.num_attention_heads", 0),
    ("architecture.backbone.hidden_size", 50),  # not a multiple of 4 x heads: RoPE would fail
    ("architecture.alpha", math.inf),
]


@pytest.mark.parametrize("field,value", ABSURD, ids=[f"{f}={v!r}" for f, v in ABSURD])
def test_absurd_architecture_is_refused_fast_before_building(ckpt, no_real_build, field, value):
    _write(ckpt, _set(_raw(ckpt), field, value))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=field.split(".")[-1]):
        load_checkpoint(ckpt)
    assert time.perf_counter() - t0 < 2.0


MISMATCHED = [
    ("architecture.backbone.hidden_size", 64),  # weights are 48 wide
    ("architecture.backbone.num_hidden_layers", 3),  # weights have 2 blocks
    ("architecture.backbone.intermediate_size", 4096),
    ("architecture.rank", 8),  # weights have rank 4
    ("architecture.targets", ["q_proj", "v_proj"]),
    ("architecture.backbone.num_register_tokens", 0),
]


@pytest.mark.parametrize("field,value", MISMATCHED, ids=[f"{f}={v!r}" for f, v in MISMATCHED])
def test_architecture_is_checked_against_the_weights_header_before_building(
    ckpt, no_real_build, field, value
):
    _write(ckpt, _set(_raw(ckpt), field, value))
    with pytest.raises(
        CheckpointError, match="model.safetensors: (the tensors do not match|tensor .* has shape)"
    ):
        load_checkpoint(ckpt)


# --- weights_file stays inside the folder ---------------------------------------------------------


def _outside_weights(ckpt, tmp_path):
    """A valid weights file outside the folder; the manifest's sha256 matches it (would load)."""
    outside = tmp_path / "elsewhere" / "stolen.safetensors"
    outside.parent.mkdir()
    shutil.copy(ckpt / "model.safetensors", outside)
    return outside


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked folder"])
def test_weights_file_is_confined_to_the_checkpoint_folder(ckpt, tmp_path, how):
    outside = _outside_weights(ckpt, tmp_path)
    raw = _raw(ckpt)
    if how == "dotdot":
        raw["weights_file"] = "../elsewhere/stolen.safetensors"
    elif how == "absolute":
        raw["weights_file"] = str(outside)
    elif how == "symlink":
        (ckpt / "model.safetensors").unlink()
        os.symlink(outside, ckpt / "model.safetensors")
    else:
        os.symlink(outside.parent, ckpt / "sub")
        raw["weights_file"] = "sub/stolen.safetensors"
    _write(ckpt, raw)
    with pytest.raises(
        CheckpointError, match="weights_file .* (does not name a file inside|outside) the checkpoint"
    ):
        load_checkpoint(ckpt)


def test_the_hash_of_a_file_outside_the_folder_is_never_shown(ckpt, tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"another user's file")
    digest = sha256_file(outside)
    for name in ("../secret.bin", str(outside)):
        _write(ckpt, dict(_raw(ckpt), weights_file=name))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(ckpt)
        for n in range(6, 65):
            assert not any(digest[i : i + n] in str(info.value) for i in range(0, 64 - n + 1, 8)), n


def test_weights_file_inside_a_subfolder_still_loads(ckpt, pixels):
    (ckpt / "weights").mkdir()
    os.replace(ckpt / "model.safetensors", ckpt / "weights" / "m.safetensors")
    _write(ckpt, dict(_raw(ckpt), weights_file="weights/m.safetensors"))
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), tiny_model(seed=3)(pixels))


def test_a_fifo_is_never_opened(ckpt):
    (ckpt / "model.safetensors").unlink()
    os.mkfifo(ckpt / "model.safetensors")  # opening it for reading would block forever
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(ckpt)
    (ckpt / "manifest.json").unlink()
    os.mkfifo(ckpt / "manifest.json")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(ckpt)


# --- values ---------------------------------------------------------------------------------------

BAD_TENSORS = {
    "int8": lambda t: t.update(
        {k: v.to(torch.int8) for k, v in t.items() if k.startswith("hypernet.heads.")}
    ),
    "bool": lambda t: t.update({"head.1.weight": t["head.1.weight"] != 0}),
    "NaN": lambda t: t["hypernet.task_embeddings"].view(-1).__setitem__(3, float("nan")),
    "inf in the backbone": lambda t: t["backbone.norm.weight"].__setitem__(0, float("inf")),
}


@pytest.mark.parametrize("change", BAD_TENSORS.values(), ids=list(BAD_TENSORS))
def test_non_float_or_non_finite_weights_are_refused(ckpt, change):
    _rewrite_weights(ckpt, change)
    with pytest.raises(CheckpointError, match="dtype .* must be floating point|NaN or infinite"):
        load_checkpoint(ckpt)


def test_half_precision_weights_still_load(ckpt, pixels):
    _rewrite_weights(ckpt, lambda t: t.update({k: v.to(torch.bfloat16) for k, v in t.items()}))
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        assert torch.isfinite(model(pixels)).all()


BAD_THRESHOLDS = [-0.1, 1.5, math.nan, math.inf, "0.5", [0.5], None, True]


@pytest.mark.parametrize("value", BAD_THRESHOLDS, ids=[repr(v) for v in BAD_THRESHOLDS])
def test_thresholds_must_be_probabilities(ckpt, value):
    raw = _raw(ckpt)
    raw["thresholds"]["lung_nodule"] = value
    (ckpt / "manifest.json").write_text(json.dumps(raw))  # json writes NaN/Infinity literals
    with pytest.raises(CheckpointError, match="thresholds.lung_nodule must be a probability"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("value", [[0.5], "high", {"not_a_finding": 0.5}])
def test_thresholds_of_the_wrong_kind_are_refused(ckpt, value):
    _write(ckpt, dict(_raw(ckpt), thresholds=value))
    with pytest.raises(CheckpointError, match="thresholds"):
        load_checkpoint(ckpt)


def test_integer_valued_float_fields_load(ckpt, pixels):
    # found by the fuzz test: transformers' strict config refused rope_theta=100 with its own
    # (untyped) error; a hand-written manifest may well say 100 instead of 100.0
    raw = _raw(ckpt)
    raw["architecture"]["backbone"].update(rope_theta=100, layerscale_value=1, layer_norm_eps=1e-5)
    _write(ckpt, raw)
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), tiny_model(seed=3)(pixels))


# --- an external backbone folder is checked against the manifest before it is built ------------------


@pytest.fixture
def external(tmp_path):
    from hyperct.network.backbone import save_backbone

    model = tiny_model(seed=6)
    save_backbone(model.backbone, tmp_path / "dinov3")
    manifest = build_manifest(
        model, model_name="t", model_version="1", backbone_weights="external", backbone_source="tiny"
    )
    return save_checkpoint(model, tmp_path / "ext", manifest), tmp_path / "dinov3"


@pytest.mark.parametrize(
    "change",
    [
        {"hidden_size": 99999},
        {"num_hidden_layers": 100_000},
        {"num_channels": 100_000},
        {"hidden_act": "no_such_activation"},
        {"rope_theta": 100},
        {"layer_norm_eps": "small"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_external_backbone_config_is_checked_before_building(external, no_real_build, change):
    from hyperct.errors import BackboneWeightsError

    folder, dinov3 = external
    cfg = json.loads((dinov3 / "config.json").read_text())
    (dinov3 / "config.json").write_text(json.dumps(dict(cfg, **change)))
    t0 = time.perf_counter()
    with pytest.raises(BackboneWeightsError, match=next(iter(change))):
        load_checkpoint(folder, backbone_dir=dinov3)
    assert time.perf_counter() - t0 < 2.0


def test_external_backbone_with_non_finite_weights_is_refused(external):
    from safetensors import safe_open

    from hyperct.errors import BackboneWeightsError

    folder, dinov3 = external
    w = dinov3 / "model.safetensors"
    with safe_open(str(w), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["norm.weight"][0] = float("nan")
    save_file(tensors, str(w))
    with pytest.raises(BackboneWeightsError, match="NaN or infinite"):
        load_checkpoint(folder, backbone_dir=dinov3)
