"""The benchmark's baselines compute what the product computes (issue 20): the authors'-style
per-task hooked forwards, the merged-weights-per-task loop and the batched pass give the same logits."""

from __future__ import annotations

import torch

from hyperct.network.reference import AuthorsStyleHyperCT, MergedPerTask


def test_authors_style_merged_and_batched_give_the_same_logits(tiny, pixels):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    authors, merged = AuthorsStyleHyperCT(tiny), MergedPerTask(tiny)
    tasks = [0, 7, 24, 3]
    with torch.no_grad():
        batched = tiny(pixels, torch.tensor(tasks))
        a = authors(pixels, tasks)
        m = merged(pixels, tasks)
        plain = tiny.backbone_only_logits(pixels)
    assert a.shape == m.shape == batched.shape == (2, 4)
    torch.testing.assert_close(a, batched, atol=1e-5, rtol=0)
    torch.testing.assert_close(m, batched, atol=1e-5, rtol=0)
    # the comparison is not vacuous: LoRA moves every task's logits far more than the tolerance
    assert (batched - plain[:, None]).abs().min() > 1e-3
    assert (batched[:, 0] - batched[:, 1]).abs().min() > 1e-3
    # the baselines leave the model as it was (merged writes into its own copies; hooks are removed)
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(lin._forward_hooks for lin in authors.targets.values())


def test_authors_style_generates_each_module_like_the_batched_hypernetwork(tiny):
    authors = AuthorsStyleHyperCT(tiny)
    with torch.no_grad():
        factors = tiny.lora_factors(torch.tensor([5]))
        for layer, kind in [(0, "q_proj"), (1, "down_proj"), (1, "v_proj")]:
            a, b = authors.module_factors(5, layer, kind)
            torch.testing.assert_close(a, factors.a[kind][0, layer], atol=1e-6, rtol=0)
            torch.testing.assert_close(b, factors.b[kind][0, layer], atol=1e-6, rtol=0)
