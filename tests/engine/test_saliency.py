"""Saliency maps: the tap points, batched maps of all findings, the one peak, the mapping back onto
the CT's voxel grid, and the method registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperct.network.backbone import encoder_layers
from hyperct.preprocess import map_to_grid
from hyperct.saliency import (
    DEFAULT_METHOD,
    METHODS,
    SaliencyMaps,
    compute_saliency,
    gradcam_token_maps,
    method_maps,
    peak_index,
    token_grid,
)
from hyperct.volume import CTVolume
from tests.support.models import tiny_model


@pytest.mark.parametrize("image,row,col", [(0, 0, 0), (20, 4, 6), (54, 8, 2)])
def test_a_single_active_token_lands_on_its_16x16_pixel_block_and_3_slices(image, row, col):
    tokens = np.zeros((55, 9, 9), np.float32)
    tokens[image, row, col] = 1.0
    model_grid = map_to_grid(tokens, (165, 144, 144))
    hot = np.argwhere(model_grid > 0.5)
    assert set(hot[:, 0]) == {3 * image, 3 * image + 1, 3 * image + 2}
    assert hot[:, 1].min() == 16 * row and hot[:, 1].max() == 16 * row + 15
    assert hot[:, 2].min() == 16 * col and hot[:, 2].max() == 16 * col + 15


def test_last_block_output_patch_tokens_get_zero_gradient_but_its_input_does_not():
    model = tiny_model()
    px = torch.randn(1, 2, 3, 48, 48)
    h0, pos, n_img = model._embed(px)
    model.lora_state.current = model._grouped_factors(torch.tensor([5]))
    layers = encoder_layers(model.backbone)
    h = h0
    for layer in layers[:-1]:
        h = layer(h, position_embeddings=pos)
    block_in = h.detach().requires_grad_(True)
    block_out = layers[-1](block_in, position_embeddings=pos)
    block_out.retain_grad()
    feats = model.backbone.norm(block_out)[:, 0].reshape(1, n_img, -1).mean(dim=1)
    model.head(feats).sum().backward()
    model.lora_state.current = None
    n = model.n_prefix
    assert torch.count_nonzero(block_out.grad[:, n:]) == 0  # the pitfall: patch tokens of the output
    assert block_out.grad[:, 0].abs().sum() > 0
    assert block_in.grad[:, n:].abs().sum() > 0  # what Grad-CAM uses


def test_all_findings_in_one_backward_equal_one_finding_at_a_time():
    model = tiny_model(seed=3)
    px = torch.randn(1, 55, 3, 48, 48)
    together = gradcam_token_maps(model, px, list(range(25)))
    assert together.shape == (25, 55, 3, 3)
    for k in (0, 12, 24):
        alone = gradcam_token_maps(model, px, [k])[0]
        np.testing.assert_allclose(together[k], alone, atol=1e-6)
    assert (together >= 0).all() and together.max() > 0
    # findings get different maps
    assert not np.allclose(together[0], together[24])
    assert all(p.grad is None for p in model.parameters())  # activations only


def test_an_earlier_block_can_be_tapped_for_comparison_and_the_default_is_the_last():
    model = tiny_model(seed=3)
    n_blocks = len(encoder_layers(model.backbone))
    px = torch.randn(1, 4, 3, 48, 48)
    default = gradcam_token_maps(model, px, [0, 7])
    np.testing.assert_array_equal(gradcam_token_maps(model, px, [0, 7], block=n_blocks - 1), default)
    earlier = gradcam_token_maps(model, px, [0, 7], block=0)
    assert earlier.shape == default.shape and earlier.max() > 0
    assert not np.allclose(earlier, default)
    # the tap is undone after use: a later plain call gives the last block's maps again
    np.testing.assert_array_equal(gradcam_token_maps(model, px, [0, 7]), default)
    with pytest.raises(ValueError, match=f"between 0 and {n_blocks - 1}"):
        gradcam_token_maps(model, px, [0], block=n_blocks)


def test_maps_come_back_on_the_ct_grid_normalised_with_a_consistent_peak():
    model = tiny_model(seed=4)
    hu = np.random.default_rng(0).normal(-500, 300, (40, 64, 72)).astype(np.float32)
    vol = CTVolume(hu=hu, spacing=(2.5, 0.7, 0.7), origin=(-25.0, -20.0, 100.0))
    maps = compute_saliency(model, vol, ["lung_nodule", "cardiomegaly"])
    assert isinstance(maps, SaliencyMaps) and maps.method == DEFAULT_METHOD
    m = maps.volume_map("lung_nodule")
    assert m.shape == vol.shape and m.dtype == np.float32
    assert m.max() == pytest.approx(1.0) and m.min() >= 0.0
    k, j, i = maps.peak_index("lung_nodule")
    assert m[k, j, i] > 0.9
    s = maps.summary("lung_nodule", vol)
    assert s.key_slice == k
    np.testing.assert_allclose(s.peak_lps_mm, vol.index_to_lps([k, j, i]), atol=0.01)


def test_integrated_gradients_is_selectable_and_lives_on_the_model_pixel_grid():
    model = tiny_model(seed=5)
    hu = np.random.default_rng(1).normal(-500, 300, (30, 48, 48)).astype(np.float32)
    vol = CTVolume(hu=hu, spacing=(3.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    maps = compute_saliency(model, vol, ["emphysema"], method="integrated_gradients", n_steps=4)
    assert maps.model_maps["emphysema"].shape == (165, 144, 144)
    assert maps.volume_map("emphysema").shape == vol.shape
    with pytest.raises(ValueError, match="choose one of gradcam, attention, token_gradient"):
        compute_saliency(model, vol, ["emphysema"], method="magic")


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].batched])
def test_batched_methods_give_all_findings_in_one_pass_equal_to_one_at_a_time(method):
    model = tiny_model(seed=6)
    px = torch.randn(1, 5, 3, 48, 48)
    together = method_maps(model, px, [0, 9, 24], method, task_chunk=3)
    for row, k in enumerate((0, 9, 24)):
        np.testing.assert_allclose(
            together[row], method_maps(model, px, [k], method)[0], rtol=1e-4, atol=1e-6
        )
    assert not np.allclose(together[0], together[2])  # findings get their own maps
    assert all(p.grad is None for p in model.parameters())  # activations only


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_a_finite_map_on_its_grid_and_leaves_the_model_as_it_was(method):
    model = tiny_model(seed=7)
    model.train()
    px = torch.randn(1, 3, 3, 48, 48)
    m = method_maps(model, px, [2], method)[0]
    expected = (3, 3, 3) if METHODS[method].grid == "token" else (9, 48, 48)
    assert m.shape == expected and np.isfinite(m).all() and np.abs(m).max() > 0
    assert model.training  # mode restored
    assert model.backbone.config._attn_implementation == "sdpa"  # eager only during the pass


def test_the_one_peak_is_the_centre_of_the_strongest_token_for_token_and_pixel_maps():
    tok = np.zeros((55, 9, 9), np.float32)
    tok[20, 4, 6] = 1.0
    pix = np.zeros((165, 144, 144), np.float32)
    pix[61, 16 * 4 + 3, 16 * 6 + 9] = 5.0  # one pixel of the same token
    pix[10, 0, 0] = -50.0  # negative evidence does not make a peak
    assert token_grid(pix).shape == (55, 9, 9)
    shape = (110, 300, 270)
    k, j, i = peak_index(tok, shape)
    assert peak_index(pix, shape) == (k, j, i)
    # the token's centre: the middle of its slices and of its 16 x 16 patch, not its first voxel
    assert k == round((20 + 0.5) * 110 / 55 - 0.5) and j == round(4.5 * 300 / 9 - 0.5)
    assert i == round(6.5 * 270 / 9 - 0.5)
    # the report's peak is the viewer's peak: SaliencyMaps uses the same function
    maps = SaliencyMaps("attention", shape, {"lung_nodule": tok})
    assert maps.peak_index("lung_nodule") == (k, j, i)


def test_a_patch_8_model_pools_pixel_maps_to_its_own_18x18_tokens_and_peaks_at_their_centres():
    pix = np.zeros((165, 144, 144), np.float32)
    pix[61, 8 * 9 + 3, 8 * 13 + 5] = 5.0  # one pixel of patch-8 token (20, 9, 13)
    assert token_grid(pix, 8).shape == (55, 18, 18)
    tok = np.zeros((55, 18, 18), np.float32)
    tok[20, 9, 13] = 1.0
    shape = (110, 300, 270)
    k, j, i = peak_index(tok, shape)  # a token map carries its own grid
    assert peak_index(pix, shape, 8) == (k, j, i)
    assert j == round(9.5 * 300 / 18 - 0.5) and i == round(13.5 * 270 / 18 - 0.5)
    # pooled as patch 16 the same pixel lands in a coarser token's centre: the patch matters
    assert peak_index(pix, shape, 16) != (k, j, i)
    maps = SaliencyMaps("integrated_gradients", shape, {"lung_nodule": pix}, patch=8)
    assert maps.peak_index("lung_nodule") == (k, j, i)
    with pytest.raises(ValueError, match="models"):
        maps.update(SaliencyMaps("integrated_gradients", shape, {}, patch=16))


@pytest.mark.parametrize("method", ["attention", "input_x_gradient"])
def test_compute_saliency_with_a_patch_8_model_gives_its_token_grid_and_the_maps_own_peak(method):
    model = tiny_model(seed=2, patch=8)
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 300, (60, 72, 72)).astype(np.float32)
    vol = CTVolume(hu=hu, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    maps = compute_saliency(model, vol, ["lung_nodule"], method=method)
    assert maps.patch == 8
    m = maps.model_maps["lung_nodule"]
    assert token_grid(m, 8).shape == (55, 18, 18)
    assert maps.peak_index("lung_nodule") == peak_index(m, vol.shape, 8)


def test_the_report_schema_names_every_saliency_method():
    import json
    from importlib import resources

    schema = json.loads(resources.files("hyperct.assets").joinpath("report.schema.json").read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "method" in node and isinstance(node["method"], dict) and "enum" in node["method"]:
                found.append(node["method"]["enum"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    assert list(METHODS) in found


def test_maps_are_drawn_inside_the_body_outline_only_lungs_included():
    from hyperct.saliency import body_mask

    hu = np.full((6, 40, 40), -1000.0, np.float32)
    yy, xx = np.mgrid[:40, :40]
    body = ((yy - 20) / 15.0) ** 2 + ((xx - 20) / 15.0) ** 2 < 1
    lung = ((yy - 20) / 8.0) ** 2 + ((xx - 20) / 8.0) ** 2 < 1
    hu[:, body] = 40.0
    hu[:, lung] = -850.0
    vol = CTVolume(hu=hu, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    mask = body_mask(vol)
    assert mask[:, body].all() and not mask[:, ~body].any()  # the lungs are inside, the air around is not
    only_key = body_mask(vol, slices=[3])
    assert only_key[3].any() and not only_key[[0, 1, 2, 4, 5]].any()
    maps = SaliencyMaps("gradcam", vol.shape, {"lung_nodule": np.ones((55, 9, 9), np.float32)})
    m = maps.volume_map("lung_nodule", within=mask)
    assert m[:, ~body].max() == 0 and m[:, lung].min() > 0


@pytest.mark.parametrize("method", list(METHODS))
def test_saliency_after_scoring_with_the_same_model_reuses_its_factors_and_gives_the_same_map(method):
    # Scoring runs under torch.inference_mode and fills the LoRA factor cache; the saliency pass that
    # follows (the viewer's Analyze then overlay, `predict --saliency`) needs a backward through the
    # same model and must not trip over inference tensors in the cache.
    px = torch.randn(1, 3, 3, 48, 48)
    fresh = method_maps(tiny_model(seed=8), px, [2, 5], method)
    model = tiny_model(seed=8)
    with torch.inference_mode():
        model(px, torch.tensor([2, 5]))
    np.testing.assert_allclose(method_maps(model, px, [2, 5], method), fresh, rtol=1e-5, atol=1e-7)
