"""The batched multi-task pass equals a per-task loop and merged weights; zero B = frozen backbone."""

from __future__ import annotations

import torch

from tests.support.models import tiny_model


def test_all_tasks_in_one_pass_equal_per_task_loop_and_merged_weights(tiny, pixels):
    with torch.no_grad():
        batched = tiny(pixels)  # (2, 25) in one backbone pass
        loop = torch.stack([tiny(pixels, torch.tensor([k]))[:, 0] for k in range(25)], dim=1)
        merged = torch.stack([tiny.merged_logits(pixels, k) for k in range(25)], dim=1)
    assert batched.shape == (2, 25)
    # the LoRA updates matter: tasks give clearly different scores
    assert (batched.max(dim=1).values - batched.min(dim=1).values).min() > 1e-2
    torch.testing.assert_close(batched, loop, atol=1e-4, rtol=0)
    torch.testing.assert_close(batched, merged, atol=1e-4, rtol=0)


def test_task_chunking_and_paired_mode_agree_with_one_pass(tiny, pixels):
    tasks = torch.tensor([3, 17, 0, 24, 9])
    with torch.no_grad():
        full = tiny(pixels, tasks)
        chunked = tiny(pixels, tasks, task_chunk=2)
        paired = tiny(pixels, torch.tensor([17, 9]), paired=True)
    torch.testing.assert_close(full, chunked, atol=1e-5, rtol=0)
    torch.testing.assert_close(paired, torch.stack([full[0, 1], full[1, 4]]), atol=1e-5, rtol=0)


def test_zero_initialised_B_is_exactly_the_frozen_backbone_for_every_task(pixels):
    model = tiny_model(random_lora=False)
    with torch.no_grad():
        feats = model.pooled_features(pixels)  # (2, 25, D)
        plain = model.backbone(pixel_values=pixels.reshape(-1, *pixels.shape[2:])).last_hidden_state[:, 0]
        plain = plain.reshape(2, 3, -1).mean(dim=1)
        logits = model(pixels)
        ref = model.backbone_only_logits(pixels)
    for k in range(25):
        assert torch.equal(feats[:, k], feats[:, 0])
    torch.testing.assert_close(feats[:, 0], plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits, ref[:, None].expand(-1, 25), atol=1e-6, rtol=0)


def test_only_hypernetwork_task_embeddings_and_head_get_gradients(tiny, pixels):
    tiny.train()
    loss = tiny(pixels, torch.tensor([2, 11]), paired=True).sum()
    loss.backward()
    for name, p in tiny.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    assert tiny.hypernet.task_embeddings.grad is not None
    used = tiny.hypernet.task_embeddings.grad.abs().sum(dim=1)
    assert used[2] > 0 and used[11] > 0 and used[0] == 0  # only the drawn tasks' embeddings move
    for name, p in list(tiny.hypernet.named_parameters()) + list(tiny.head.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    counts = tiny.parameter_counts()
    assert counts["trainable"] == counts["hypernetwork"] + counts["head"]


def test_backbone_stays_in_eval_mode_so_rope_is_deterministic(tiny, pixels):
    tiny.train()
    assert tiny.training and not tiny.backbone.training
    with torch.no_grad():
        a = tiny(pixels, torch.tensor([1]))
        b = tiny(pixels, torch.tensor([1]))
    assert torch.equal(a, b)


def test_lora_factors_are_generated_once_and_cached_until_weights_change(tiny, pixels, monkeypatch):
    calls = []
    original = tiny.hypernet.forward
    monkeypatch.setattr(tiny.hypernet, "forward", lambda tasks: calls.append(len(tasks)) or original(tasks))
    with torch.no_grad():
        first = tiny(pixels)
        again = tiny(pixels, torch.tensor([4, 5]))
    assert calls == [25]  # one generation for all tasks, reused by the second call
    torch.testing.assert_close(again, first[:, 4:6])
    with torch.no_grad():
        tiny.hypernet.heads["v_proj"].bias.add_(0.5)  # in-place change, like an optimizer step
        changed = tiny(pixels)
    assert calls == [25, 25]
    assert not torch.allclose(changed, first)


def test_a_deep_copy_is_independent_and_scores_the_same(tiny, pixels):
    import copy

    other = copy.deepcopy(tiny)
    with torch.no_grad():
        torch.testing.assert_close(other(pixels), tiny(pixels))
        other.hypernet.heads["q_proj"].bias.add_(1.0)
        assert not torch.allclose(other(pixels), tiny(pixels))
