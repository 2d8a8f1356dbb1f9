"""The conv stem beside the windowed patch embedding (issue 18: a linear patch embedding is where a
reader of the ViT's token grid loses the LV findings): it starts computing what the backbone did,
then reads each patch through convolutions; it travels in backbone folders and checkpoints, and bad
configs are refused naming the field."""

from __future__ import annotations

import json

import pytest
import torch

from hyperct.checkpoint import build_manifest, save_checkpoint
from hyperct.errors import BackboneWeightsError, CheckpointError
from hyperct.loading import load_model
from hyperct.network.backbone import build_backbone, load_backbone, save_backbone
from hyperct.network.conv_stem import ConvStem, add_conv_stem
from hyperct.network.windows import DEMO_WINDOWS, add_windows, extend_windows
from tests.support.models import TINY_BACKBONE, assert_same_hidden_states, tiny_model

WINDOWED = dict(TINY_BACKBONE, hu_windows=[list(w) for w in DEMO_WINDOWS])


def trained_windowed():
    torch.manual_seed(0)
    bb = add_windows(build_backbone(dict(TINY_BACKBONE)), DEMO_WINDOWS)
    with torch.no_grad():
        bb.embeddings.patch_embeddings.weight.normal_(0, 0.02)
        bb.embeddings.patch_embeddings.pooled.weight.normal_(0, 0.5)
    return bb.eval()


def test_a_backbone_given_a_stem_computes_what_it_did_then_reads_through_it():
    bb = trained_windowed()
    stemmed = add_conv_stem(bb, 8, seed=0).eval()
    assert stemmed.config.conv_stem == 8 and bb.embeddings.patch_embeddings.stem is None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            stemmed(pixel_values=x).last_hidden_state, bb(pixel_values=x).last_hidden_state, rtol=0, atol=1e-6
        )
        stemmed.embeddings.patch_embeddings.stem.proj.weight.normal_(0, 0.1)
        assert (
            stemmed(pixel_values=x).last_hidden_state - bb(pixel_values=x).last_hidden_state
        ).abs().max() > 1e-3
    with pytest.raises(ValueError, match="already"):
        add_conv_stem(stemmed, 8)
    with pytest.raises(ValueError, match="HU windows"):
        add_conv_stem(build_backbone(dict(TINY_BACKBONE)), 8)
    with pytest.raises(ValueError, match="4..128"):
        add_conv_stem(bb, 2)


def test_a_window_added_after_the_stem_computes_what_it_did_and_the_stem_reads_it():
    bb = trained_windowed()
    stemmed = add_conv_stem(bb, 8, seed=0).eval()
    with torch.no_grad():
        stemmed.embeddings.patch_embeddings.stem.proj.weight.normal_(0, 0.1)
    metal = [950.0, 1000.0]
    wider = extend_windows(stemmed, [metal]).eval()
    emb = wider.embeddings.patch_embeddings
    assert wider.config.hu_windows[-1] == metal and wider.config.conv_stem == 8
    first = emb.stem.blocks[0].weight
    assert first.shape[1] == 3 * (2 + len(DEMO_WINDOWS)) and first[:, -3:].abs().max() == 0
    x = torch.randn(2, 3, 64, 64)
    x[:, :, 10:14, 10:14] = 4.0  # normalised input this high is above 950 HU: the new window's ramp
    assert_same_hidden_states(wider, stemmed, x)
    with torch.no_grad():
        first[:, -3:].normal_(0, 0.5)  # the stem's columns for the new window
        assert (
            wider(pixel_values=x).last_hidden_state - stemmed(pixel_values=x).last_hidden_state
        ).abs().max() > 1e-3


def test_each_token_of_the_stem_reads_its_own_patch_and_its_gradient_reaches_the_input():
    stem = ConvStem(12, 4, 8)
    with torch.no_grad():
        stem.proj.weight.normal_(0, 1.0)
    x = torch.randn(1, 12, 50, 50)  # 50: a remainder past the last whole patch, left out
    y = x.clone()
    y[0, :, 20, 40] += 3.0  # a pixel of patch (1, 2)
    with torch.no_grad():
        a, b = stem(x), stem(y)
    assert a.shape == (1, 8, 3, 3)
    assert (a - b).abs().amax(dim=1)[0, 1, 2] > 0
    z = x.clone().requires_grad_(True)
    stem(z).sum().backward()
    assert z.grad[0, :, :48, :48].abs().sum() > 0 and z.grad[0, :, 48:, :].abs().sum() == 0


def test_a_stemmed_backbone_survives_its_folder_and_bad_stems_are_refused_naming_the_file(tmp_path):
    bb = add_conv_stem(trained_windowed(), 8, seed=1)
    with torch.no_grad():
        bb.embeddings.patch_embeddings.stem.proj.weight.normal_(0, 0.1)
    save_backbone(bb, tmp_path / "bb")
    back = load_backbone(tmp_path / "bb")
    assert back.config.conv_stem == 8
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            back(pixel_values=x).last_hidden_state, bb.eval()(pixel_values=x).last_hidden_state
        )
    cfg = json.loads((tmp_path / "bb" / "config.json").read_text())
    for bad, match in (
        ({"conv_stem": 1000}, "4..128"),
        ({"conv_stem": 8, "hu_windows": None}, "needs hu_windows"),
    ):
        (tmp_path / "bb" / "config.json").write_text(json.dumps(dict(cfg, **bad)))
        with pytest.raises(BackboneWeightsError, match=match) as info:
            load_backbone(tmp_path / "bb")
        assert "config.json" in str(info.value)
    with pytest.raises(BackboneWeightsError, match="patch_size 16"):
        build_backbone(dict(WINDOWED, patch_size=8, conv_stem=8))


def _stemmed_checkpoint(path):
    model = tiny_model(seed=4, hu_windows=DEMO_WINDOWS)
    emb = model.backbone.embeddings.patch_embeddings  # (in place: the LoRA wraps this backbone's layers)
    emb.stem = ConvStem(emb.in_channels, 8, emb.out_channels)
    model.backbone.config.conv_stem = 8
    with torch.no_grad():
        emb.stem.proj.weight.normal_(0, 0.1)
    manifest = build_manifest(
        model, model_name="t", model_version="0", backbone_weights="included", backbone_source="random"
    )
    return model.eval(), save_checkpoint(model, path, manifest)


def test_a_hyperct_with_a_stem_saves_loads_and_scores_as_it_did(tmp_path, capsys):
    from hyperct.cli.main import main

    model, folder = _stemmed_checkpoint(tmp_path / "ckpt")
    px, tasks = torch.randn(1, 4, 3, 48, 48), torch.arange(5)
    loaded = load_model(folder, device="cpu").model
    with torch.inference_mode():
        torch.testing.assert_close(loaded(px, tasks), model(px, tasks), rtol=0, atol=1e-5)
    assert main(["info", "--model", str(folder), "--device", "cpu"]) == 0
    assert "conv stem beside the patch embedding: width 8" in capsys.readouterr().out
    raw = json.loads((folder / "manifest.json").read_text())
    raw["architecture"]["backbone"]["conv_stem"] = True
    (folder / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="architecture.backbone.conv_stem.*whole number"):
        load_model(folder, device="cpu")
