"""train.embedding_cache: each training volume's frozen input stage computed once and reused, with
the same training as without it (float32) and a refusal where the backbone is trained."""

from __future__ import annotations

import json

import pytest
import torch

from hyperct.errors import ConfigError
from hyperct.training.trainer import build_model, train
from tests.support.training import SignalDataset, interrupted_and_resumed, tiny_config


def _frozen(cache: str, epochs: int = 3):
    return tiny_config(
        model={"train_backbone": False},
        optim={"lr": 3e-3},
        train={"epochs": epochs, "batch_size": 4, "micro_batch": 2, "embedding_cache": cache},
    )


def test_embedded_tokens_score_as_the_pixels_do():
    model = build_model(tiny_config()).eval()
    pixels = torch.stack([SignalDataset(3, 7).pixel_values(i) for i in range(3)])
    tokens = model.embed_images(pixels)
    assert tokens.shape[:2] == (3, 3) and tokens.shape[-1] == model.backbone.config.hidden_size
    tasks = torch.tensor([0, 4, 9])
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens, tasks, paired=True, embedded=True), model(pixels, tasks, paired=True)
        )
        torch.testing.assert_close(model(tokens, embedded=True), model(pixels))
    with pytest.raises(ValueError, match="not a square grid"):
        model(tokens[:, :, :-1], tasks, paired=True, embedded=True)
    with pytest.raises(ValueError, match="embedded tokens"):
        model(pixels, tasks, paired=True, embedded=True)


def test_cached_run_reads_each_volume_once_and_trains_as_without_the_cache(tmp_path):
    runs = {}
    for cache in ("off", "float32"):
        train_ds, valid_ds = SignalDataset(12, 0), SignalDataset(8, 1)
        result = train(_frozen(cache), tmp_path / cache, datasets=(train_ds, valid_ds), echo=None)
        log = [json.loads(line) for line in (tmp_path / cache / "log.jsonl").read_text().splitlines()]
        runs[cache] = (result.model, train_ds.reads, log)
    (plain, plain_reads, plain_log), (cached, cached_reads, cached_log) = runs["off"], runs["float32"]
    assert plain_reads == 3 * 12  # every epoch reads every training volume
    assert cached_reads == 12  # once, in the first epoch
    assert [e["embedding_cache_mb"] > 0 for e in cached_log] == [True] * 3
    assert "embedding_cache_mb" not in plain_log[0]
    for a, b in zip(plain_log, cached_log):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    trained = {n for n, p in plain.named_parameters() if p.requires_grad}
    for name, p in cached.named_parameters():
        if name in trained:
            torch.testing.assert_close(p, dict(plain.named_parameters())[name], rtol=1e-4, atol=1e-6)


def test_float16_cache_changes_training_only_by_rounding(tmp_path):
    logs = {}
    for cache in ("off", "float16"):
        data = (SignalDataset(12, 0), SignalDataset(8, 1))
        train(_frozen(cache, epochs=2), tmp_path / cache, datasets=data, echo=None)
        logs[cache] = [json.loads(x) for x in (tmp_path / cache / "log.jsonl").read_text().splitlines()]
    for a, b in zip(logs["off"], logs["float16"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-3)
        assert b["val_mean_auc"] == pytest.approx(a["val_mean_auc"], abs=0.05)


def test_a_trained_backbone_refuses_the_cache(tmp_path):
    cfg = tiny_config(model={"train_backbone": True}, train={"embedding_cache": "float16"})
    with pytest.raises(ConfigError, match="frozen backbone"):
        train(cfg, tmp_path / "r", datasets=(SignalDataset(6, 0), SignalDataset(6, 1)), echo=None)


def test_a_resumed_cached_run_refills_the_cache_and_ends_where_an_uninterrupted_one_does(tmp_path):
    again, _ = interrupted_and_resumed(
        _frozen("float32", epochs=2), tmp_path, lambda: (SignalDataset(12, 0), SignalDataset(8, 1))
    )
    assert again.reads == 12  # the new process embeds every volume again, once


def test_a_cache_larger_than_its_memory_budget_is_refused_before_training():
    from hyperct.training.embedding_cache import EmbeddingCache

    model = build_model(tiny_config(model={"train_backbone": False}))
    data = SignalDataset(40, 0)
    cache = EmbeddingCache(model, data, "float16")
    need = cache.check_fits()
    one = cache.batch([0])[0]
    assert need == one.numel() * 2 * 40  # float16: 2 bytes a value, 40 volumes
    with pytest.raises(ConfigError, match=r"40 volumes .* more than the"):
        cache.check_fits(need - 1)
    assert data.reads == 1  # sized from the first volume alone
