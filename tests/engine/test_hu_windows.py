"""HU windows before the patch embedding (hyperct.network.windows): the window/level ramps of each
slice as extra input channels of a DINOv3-structured backbone, saved, loaded and run like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hyperct.checkpoint import build_manifest, save_checkpoint
from hyperct.errors import BackboneWeightsError, ConfigError
from hyperct.loading import load_model
from hyperct.network.backbone import build_backbone, load_backbone, save_backbone
from hyperct.network.windows import DEMO_WINDOWS, WindowedPatchEmbedding, add_windows
from hyperct.preprocess import normalise
from tests.support.models import TINY_BACKBONE, save_tiny_checkpoint, tiny_model


def _pixels_of_hu(hu: np.ndarray) -> torch.Tensor:
    """(3, H, W) HU -> (1, 3, H, W) model input, as preprocess builds it."""
    return normalise(torch.as_tensor(hu, dtype=torch.float32)).reshape(1, 3, *hu.shape[1:])


def test_each_window_channel_is_the_window_level_ramp_of_its_slice():
    hu = np.array([-1000.0, -700.0, 40.0, 130.0, 330.0, 900.0], np.float32).reshape(1, 1, 6)
    hu = np.repeat(hu, 3, axis=0)
    hu[1] += 10.0  # the slices differ, so a mixed-up channel order shows
    stem = WindowedPatchEmbedding(3, 4, 1, DEMO_WINDOWS)
    out = stem.windowed(_pixels_of_hu(hu))[0].numpy()  # (3 * 4, 1, 6)
    assert out.shape == (12, 1, 6)
    np.testing.assert_allclose(out[:3], _pixels_of_hu(hu)[0].numpy(), atol=1e-6)  # the input first
    for w, (lo, hi) in enumerate(DEMO_WINDOWS):
        for c in range(3):
            expected = np.clip((hu[c] - lo) / (hi - lo), 0, 1) - 0.5
            np.testing.assert_allclose(out[3 + 3 * w + c], expected, atol=2e-4)
    # the calcium window: soft tissue (40 HU) reads as its floor, 330 HU half way
    calcium = DEMO_WINDOWS.index((130.0, 530.0))
    assert out[3 + 3 * calcium, 0, 2] == pytest.approx(-0.5) and out[3 + 3 * calcium, 0, 4] == pytest.approx(
        0.0, abs=1e-4
    )


def test_the_pooled_readout_sees_one_bright_voxel_wherever_it_lies_in_the_patch():
    stem = WindowedPatchEmbedding(3, 2, 16, DEMO_WINDOWS)
    calcium = DEMO_WINDOWS.index((130.0, 530.0))
    with torch.no_grad():  # only two readouts: the calcium window's maximum and mean, middle slice
        stem.weight.zero_()
        stem.bias.zero_()
        stem.pooled.weight.zero_()
        stem.pooled.bias.zero_()
        stem.pooled.weight[0, 3 * calcium + 1] = 1.0
        stem.pooled.weight[1, 9 + 3 * calcium + 1] = 1.0
    outs = []
    for r, c in [(0, 0), (7, 11), (15, 15)]:
        hu = np.full((3, 16, 16), 40.0, np.float32)  # soft tissue
        hu[1, r, c] = 430.0  # one calcified voxel, 3/4 up the calcium window
        with torch.no_grad():
            outs.append(stem(_pixels_of_hu(hu))[0, :, 0, 0].numpy())
    for o in outs:
        assert o[0] == pytest.approx(0.25, abs=1e-3)  # the maximum: the voxel's ramp value
        assert o[1] == pytest.approx(-0.5 + 0.75 / 256, abs=1e-4)  # the mean: one voxel of 256
    with torch.no_grad():
        plain = stem(_pixels_of_hu(np.full((3, 16, 16), 40.0, np.float32)))[0, :, 0, 0].numpy()
    assert plain[0] == pytest.approx(-0.5, abs=1e-4)


def test_adding_windows_starts_where_the_trained_backbone_is_and_survives_its_folder(tmp_path):
    plain = build_backbone(dict(TINY_BACKBONE), seed=1)
    windowed = add_windows(plain, DEMO_WINDOWS)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = plain(pixel_values=x).last_hidden_state
        after = windowed(pixel_values=x).last_hidden_state
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert windowed.embeddings.patch_embeddings.weight.shape[1] == 12
    assert not hasattr(plain.config, "hu_windows") or not plain.config.hu_windows  # the original is unchanged
    save_backbone(plain, tmp_path / "plain")
    assert "hu_windows" not in json.loads((tmp_path / "plain" / "config.json").read_text())  # DINOv3 layout
    with torch.no_grad():  # training moves the window kernels; the folder must keep them
        windowed.embeddings.patch_embeddings.weight[:, 3:].normal_(0, 0.02)
        windowed.embeddings.patch_embeddings.pooled.weight.normal_(0, 0.02)
        moved = windowed(pixel_values=x).last_hidden_state
    save_backbone(windowed, tmp_path / "windowed")
    cfg = json.loads((tmp_path / "windowed" / "config.json").read_text())
    assert cfg["hu_windows"] == [list(w) for w in DEMO_WINDOWS]
    loaded = load_backbone(tmp_path / "windowed")
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).last_hidden_state, moved, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already"):
        add_windows(windowed, DEMO_WINDOWS)


@pytest.mark.parametrize(
    "windows,match",
    [
        ([[300, 100]], r"hu_windows\[0\].*lo < hi"),
        ([[-2000, 0]], "clipped"),
        ([[1, 2, 3]], "pair"),
        ("lung", "list"),
    ],
)
def test_a_bad_window_in_config_json_names_the_window_and_the_file(tmp_path, windows, match):
    save_backbone(build_backbone(dict(TINY_BACKBONE), seed=0), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hu_windows"] = windows
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackboneWeightsError, match=match) as info:
        load_backbone(tmp_path)
    assert "config.json" in str(info.value)


def test_a_hyperct_with_windows_saves_loads_and_scores_as_it_did_also_in_bf16(tmp_path):
    model = tiny_model(seed=4, hu_windows=DEMO_WINDOWS)
    with torch.no_grad():
        model.backbone.embeddings.patch_embeddings.weight[:, 3:].normal_(0, 0.05)
        model.backbone.embeddings.patch_embeddings.pooled.weight.normal_(0, 0.05)
    px = torch.randn(1, 4, 3, 48, 48)
    tasks = torch.arange(5)
    with torch.inference_mode():
        ref = model(px, tasks)
    manifest = build_manifest(
        model, model_name="t", model_version="0", backbone_weights="included", backbone_source="random"
    )
    assert manifest["architecture"]["backbone"]["hu_windows"] == [list(w) for w in DEMO_WINDOWS]
    loaded = load_model(save_checkpoint(model, tmp_path / "ckpt", manifest), device="cpu").model
    with torch.inference_mode():
        torch.testing.assert_close(loaded(px, tasks), ref, rtol=0, atol=1e-5)
        low = loaded.to_inference_dtype(torch.bfloat16)(px, tasks).float()
    assert (low - ref).abs().max() < 0.1
    # the windows matter: the same model without its window kernels scores differently
    with torch.no_grad():
        model.backbone.embeddings.patch_embeddings.weight[:, 3:].zero_()
        model.backbone.embeddings.patch_embeddings.pooled.weight.zero_()
        model.clear_factor_cache()
    with torch.inference_mode():
        assert (model(px, tasks) - ref).abs().max() > 1e-3


def test_pixel_attribution_reaches_the_input_through_the_windows():
    model = tiny_model(seed=5, hu_windows=DEMO_WINDOWS)
    with torch.no_grad():
        model.backbone.embeddings.patch_embeddings.weight[:, :3].zero_()  # only the windows see the input
        model.backbone.embeddings.patch_embeddings.weight[:, 3:].zero_()  # ... through the pooled readout
    x = (torch.randn(1, 2, 3, 48, 48) * 0.5).requires_grad_(True)
    model(x, torch.tensor([3])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pretraining_adds_windows_only_to_an_init_backbone():
    from hyperct.training.pretrain_config import PretrainConfig

    base = {"data": {"train": {"type": "phantom", "count": 2}}}
    with pytest.raises(ConfigError, match="init_hu_windows.*init"):
        PretrainConfig.from_dict(dict(base, init_hu_windows=[[130, 530]]))
    with pytest.raises(ConfigError, match=r"init_hu_windows.*hu_windows\[0\]"):
        PretrainConfig.from_dict(dict(base, init="x", init_hu_windows=[[530, 130]]))
    cfg = PretrainConfig.from_dict(dict(base, init="x", init_hu_windows=[[130, 530]]))
    assert cfg.init_hu_windows == [[130, 530]]


@pytest.mark.parametrize(
    "windows,match",
    [([[130, 530]] * 17, "at most 16"), ([[130, float("nan")]], "lo < hi"), ([[True, 2]], "pair of numbers")],
)
def test_a_checkpoint_manifest_with_bad_windows_is_refused_naming_the_field(tmp_path, windows, match):
    from hyperct.errors import CheckpointError

    folder = save_tiny_checkpoint(tmp_path / "ckpt", seed=4, hu_windows=DEMO_WINDOWS)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["architecture"]["backbone"]["hu_windows"] = windows
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=f"architecture.backbone.hu_windows.*{match}"):
        load_model(folder, device="cpu")


def test_hyperct_info_names_the_windows_of_a_windowed_checkpoint(tmp_path, capsys):
    from hyperct.cli.main import main

    folder = save_tiny_checkpoint(tmp_path / "ckpt", seed=4, hu_windows=DEMO_WINDOWS)
    assert main(["info", "--model", str(folder), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "HU windows before the patch embedding: [-160, 240], [130, 530], [-1000, -500] HU" in out


def _reference_stem(stem: WindowedPatchEmbedding, x: torch.Tensor) -> torch.Tensor:
    """What the windowed embedding computes, written the plain way: one convolution over the input
    and all its windowed copies, plus the pooled readout of the copies' patch maxima and means."""
    from hyperct.network.windows import patch_max_mean, windowed_input

    w = windowed_input(x, stem.windows)
    stats = patch_max_mean(w[:, stem.image_channels :], stem.kernel_size)
    pooled = stem.pooled(stats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return torch.nn.functional.conv2d(w, stem.weight, stem.bias, stride=stem.kernel_size) + pooled


@pytest.mark.parametrize("size", [48, 50])  # 50: a remainder the patches leave out
def test_the_fast_embedding_computes_the_plain_formula_and_its_gradients(size):
    torch.manual_seed(0)
    stem = WindowedPatchEmbedding(3, 8, 16, DEMO_WINDOWS)
    with torch.no_grad():
        for p in stem.parameters():
            p.normal_(0, 0.05)
    hu = torch.empty(2, 3, size, size).uniform_(-1100, 1100)  # every window, in and out of it
    x = normalise(hu.reshape(-1, size, size)).reshape(2, 3, size, size).requires_grad_(True)
    got, want = stem(x), _reference_stem(stem, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    seed = torch.randn_like(want)
    g_got = torch.autograd.grad((got * seed).sum(), [x, *stem.parameters()])
    g_want = torch.autograd.grad((want * seed).sum(), [x, *stem.parameters()])
    for a, b in zip(g_got, g_want):  # input gradients (saliency) and weight gradients (stage 1)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # a bfloat16 model takes bfloat16 input as before
        half = WindowedPatchEmbedding(3, 8, 16, DEMO_WINDOWS)
        half.load_state_dict(stem.state_dict())
        half = half.to(torch.bfloat16)
        out = half(x.detach().to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want.detach(), rtol=0.05, atol=0.05)
