"""Backbone configurations and loading users' DINOv3 weights from a local HF-format folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyperct.errors import BackboneWeightsError
from hyperct.network.backbone import backbone_config, build_backbone, load_backbone, save_backbone
from tests.support.models import TINY_BACKBONE


def vit_parameter_count(d: int, layers: int, mlp: int, patch: int, registers: int) -> int:
    """DINOv3 ViT parameter count from its architecture (no key bias, LayerScale, final norm)."""
    embed = d * (1 + 1 + registers) + 3 * patch * patch * d + d
    attn = 4 * d * d + 3 * d  # q, k, v, o weights; q, v, o biases
    block = 2 * 2 * d + attn + 2 * d + (d * mlp + mlp) + (mlp * d + d)
    return embed + layers * block + 2 * d


@pytest.mark.slow
def test_vitb16_has_86_tokens_per_image_and_dinov3_vitb16_parameter_count(tmp_path):
    model = build_backbone("vitb16", seed=0)
    n = sum(p.numel() for p in model.parameters())
    assert n == vit_parameter_count(768, 12, 3072, 16, 4)
    assert 85_500_000 < n < 86_000_000  # "ViT-B/16, 86M"
    with torch.no_grad():
        out = model(pixel_values=torch.zeros(1, 3, 144, 144)).last_hidden_state
    assert out.shape == (1, 1 + 4 + 81, 768)

    # a saved-and-reloaded random vitb16 folder loads through the users' path, official layout
    save_backbone(model, tmp_path / "dinov3")
    names = load_file(str(tmp_path / "dinov3" / "model.safetensors")).keys()
    assert "layer.0.attention.q_proj.weight" in names and "embeddings.register_tokens" in names
    again = load_backbone(tmp_path / "dinov3")
    x = torch.randn(2, 3, 144, 144)
    with torch.no_grad():
        torch.testing.assert_close(
            again(pixel_values=x).last_hidden_state, model(pixel_values=x).last_hidden_state
        )


def test_saved_backbone_folder_is_readable_by_transformers_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import DINOv3ViTModel

    model = build_backbone(dict(TINY_BACKBONE), seed=3)
    save_backbone(model, tmp_path / "bb")
    theirs = DINOv3ViTModel.from_pretrained(tmp_path / "bb").eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            theirs(pixel_values=x).last_hidden_state, model(pixel_values=x).last_hidden_state
        )


def _write_tiny(tmp_path):
    save_backbone(build_backbone(dict(TINY_BACKBONE), seed=1), tmp_path / "bb")
    return tmp_path / "bb"


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist.*nothing is downloaded"):
        load_backbone(tmp_path / "nope")
    folder = _write_tiny(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(BackboneWeightsError, match="model.safetensors is missing"):
        load_backbone(folder)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    folder = _write_tiny(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["layer.1.mlp.up_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(BackboneWeightsError, match=r"missing 1 tensor\(s\): layer.1.mlp.up_proj.weight"):
        load_backbone(folder)

    tensors["layer.1.mlp.up_proj.weight"] = torch.zeros(7, 48)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(
        BackboneWeightsError, match=r"layer.1.mlp.up_proj.weight has shape \(7, 48\).*\(96, 48\)"
    ):
        load_backbone(folder)


def test_wrong_model_type_and_corrupt_weights_are_refused(tmp_path):
    folder = _write_tiny(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, model_type="vit")))
    with pytest.raises(BackboneWeightsError, match="not a DINOv3 ViT"):
        load_backbone(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(BackboneWeightsError, match="model.safetensors cannot be read"):
        load_backbone(folder)


def test_unknown_named_configuration():
    with pytest.raises(BackboneWeightsError, match="use one of vitb16, demo"):
        backbone_config("vitl16")


def test_a_mapping_changes_the_named_base_configuration_it_gives():
    wide = backbone_config({"base": "demo", "hidden_size": 192, "intermediate_size": 768})
    demo = backbone_config("demo")
    assert (wide.hidden_size, wide.intermediate_size) == (192, 768)
    assert (wide.num_hidden_layers, wide.num_attention_heads, wide.patch_size) == (
        demo.num_hidden_layers,
        demo.num_attention_heads,
        demo.patch_size,
    )
    assert (
        build_backbone({"base": "demo", "hidden_size": 192, "intermediate_size": 768}).config.hidden_size
        == 192
    )
    with pytest.raises(BackboneWeightsError, match="unknown backbone configuration 'demo2'"):
        backbone_config({"base": "demo2", "hidden_size": 192})


def test_a_deepened_backbone_starts_with_the_function_of_the_trained_one_and_its_new_blocks_learn():
    from hyperct.network.backbone import deepen_backbone, encoder_layers

    small = build_backbone(dict(TINY_BACKBONE), seed=3)
    deep = deepen_backbone(small, 2, seed=4)
    assert deep.config.num_hidden_layers == TINY_BACKBONE["num_hidden_layers"] + 2
    x = torch.randn(2, 3, 144, 144)
    with torch.no_grad():
        assert torch.equal(small(pixel_values=x).last_hidden_state, deep(pixel_values=x).last_hidden_state)
    new = list(encoder_layers(deep))[-1]
    assert not torch.equal(new.attention.q_proj.weight, torch.zeros_like(new.attention.q_proj.weight))
    # one optimiser step moves the new blocks away from the identity
    deep.train()
    opt = torch.optim.SGD(deep.parameters(), lr=0.1)
    deep(pixel_values=x).last_hidden_state[:, 0].pow(2).sum().backward()
    assert new.layer_scale2.lambda1.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        assert not torch.equal(
            small(pixel_values=x).last_hidden_state, deep.eval()(pixel_values=x).last_hidden_state
        )
    with pytest.raises(ValueError, match="extra_layers"):
        deepen_backbone(small, 0)


def test_a_repatched_backbone_computes_on_the_image_what_the_trained_one_does_on_it_magnified():
    from hyperct.network.backbone import repatch_backbone

    big = build_backbone(dict(TINY_BACKBONE, patch_size=16), seed=3).eval()
    small = repatch_backbone(big, 8)
    assert small.config.patch_size == 8 and not small.training
    x = torch.randn(2, 3, 144, 144)
    magnified = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 2x: 288 x 288
    with torch.no_grad():
        got = small(pixel_values=x).last_hidden_state
        want = big(pixel_values=magnified).last_hidden_state
        plain = big(pixel_values=x).last_hidden_state
    assert (
        got.shape
        == want.shape
        == (2, 1 + TINY_BACKBONE.get("num_register_tokens", 0) + 18 * 18, got.shape[-1])
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert plain.shape[1] < got.shape[1]  # 81 patch tokens at patch 16, 324 at patch 8
    for bad in (16, 5, 32, 0):
        with pytest.raises(ValueError, match="patch size"):
            repatch_backbone(big, bad)


def test_extra_layers_need_an_init_backbone():
    from hyperct.errors import ConfigError
    from hyperct.training.pretrain_config import PretrainConfig

    train = {"type": "phantom", "count": 2}
    with pytest.raises(ConfigError, match="init_extra_layers.*init"):
        PretrainConfig.load(None, {"data": {"train": train}, "init_extra_layers": 2})
    cfg = PretrainConfig.load(None, {"data": {"train": train}, "init": "runs/x", "init_extra_layers": 2})
    assert cfg.init_extra_layers == 2
