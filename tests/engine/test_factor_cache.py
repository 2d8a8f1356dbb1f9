"""The factor cache hands the LoRA matmuls its own memory (issue 20): no per-forward copy or cast of
the factors, same logits bit for bit as gathered copies; bf16 backbone weights for CPU inference."""

from __future__ import annotations

import copy

import pytest
import torch

from hyperct.network.hyperct import FactorCache


class MatmulSpy:
    """Records the factor operand of every LoRA bmm (``at``) and baddbmm (``bt``) during a forward."""

    def __init__(self, monkeypatch):
        self.at: list[torch.Tensor] = []
        self.bt: list[torch.Tensor] = []
        bmm, baddbmm = torch.bmm, torch.baddbmm

        def spy_bmm(x, factor, *a, **k):
            self.at.append(factor)
            return bmm(x, factor, *a, **k)

        def spy_baddbmm(out, low, factor, *a, **k):
            self.bt.append(factor)
            return baddbmm(out, low, factor, *a, **k)

        monkeypatch.setattr(torch, "bmm", spy_bmm)
        monkeypatch.setattr(torch, "baddbmm", spy_baddbmm)


def _inside(t: torch.Tensor, store: torch.Tensor) -> bool:
    """``t``'s memory lies inside ``store``'s (it is a view of the cache, not a copy)."""
    lo = store.data_ptr()
    hi = lo + store.numel() * store.element_size()
    return lo <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= hi


def _cache_tensors(model, dtype=torch.float32) -> list[torch.Tensor]:
    full = model._factor_cache.full[dtype]
    return [*full.at.values(), *full.bt.values()]


def _reads_only_the_cache(spy: MatmulSpy, model, dtype=torch.float32) -> bool:
    stores = _cache_tensors(model, dtype)
    return all(any(_inside(f, s) for s in stores) for f in spy.at + spy.bt)


def test_cache_is_contiguous_and_the_lora_matmuls_read_it_without_a_copy(tiny, pixels, monkeypatch):
    with torch.no_grad():
        tiny(pixels, task_chunk=25)  # builds the cache
    for t in _cache_tensors(tiny):
        assert t.is_contiguous()
    spy = MatmulSpy(monkeypatch)
    with torch.no_grad():
        tiny(pixels, task_chunk=2)  # 13 chunks of consecutive tasks
    n_modules = len(tiny._wrapped)
    assert len(spy.at) == len(spy.bt) == 13 * n_modules
    assert all(f.is_contiguous() and f.dtype == torch.float32 for f in spy.at + spy.bt)
    assert _reads_only_the_cache(spy, tiny)
    # chunk c's first LoRA matmul (layer 0, q_proj) reads the cache's block of tasks 2c, 2c + 1 itself
    q0 = tiny._factor_cache.full[torch.float32].at["q_proj"][0]
    for c in range(13):
        assert spy.at[c * n_modules].data_ptr() == q0[2 * c].data_ptr()
        assert spy.at[c * n_modules].shape[0] == (2 if c < 12 else 1)


def test_a_non_consecutive_task_list_is_gathered_once_and_then_reused(tiny, pixels, monkeypatch):
    tasks = torch.tensor([3, 17, 0, 24, 9])
    with torch.no_grad():
        tiny(pixels, tasks, task_chunk=2)
    spy = MatmulSpy(monkeypatch)
    with torch.no_grad():
        tiny(pixels, tasks, task_chunk=2)
    first = [f.data_ptr() for f in spy.at + spy.bt]
    spy.at.clear()
    spy.bt.clear()
    with torch.no_grad():
        tiny(pixels, tasks, task_chunk=2)
    assert [f.data_ptr() for f in spy.at + spy.bt] == first  # the same gathered blocks, no new copy
    assert all(f.is_contiguous() for f in spy.at + spy.bt)
    # bounded: many different lists keep at most n_tasks tasks gathered
    with torch.no_grad():
        for k in range(20):
            tiny(pixels, torch.tensor([k + 3, k, k + 5]), task_chunk=3)
    kept = tiny._factor_cache._gathered
    assert 0 < sum(len(ids) for _, ids in kept) <= 25


def _gathered_copies(monkeypatch):
    """Make the cache hand over gathered copies for every chunk (what it did before issue 20)."""

    def copies(self, ids, index, dtype, generate, *, remember):
        return self.all_tasks(dtype, generate).select(index)

    monkeypatch.setattr(FactorCache, "factors", copies)


@pytest.mark.parametrize("chunk", [1, 2, 25])
def test_views_of_the_cache_give_bit_identical_logits_to_gathered_copies(tiny, pixels, monkeypatch, chunk):
    with torch.no_grad():
        views = tiny(pixels, task_chunk=chunk)
        subset = tiny(pixels, torch.tensor([4, 5, 6, 20, 1]), task_chunk=chunk)
    _gathered_copies(monkeypatch)
    tiny.clear_factor_cache()
    with torch.no_grad():
        copied = tiny(pixels, task_chunk=chunk)
        subset_copied = tiny(pixels, torch.tensor([4, 5, 6, 20, 1]), task_chunk=chunk)
    assert torch.equal(views, copied)
    assert torch.equal(subset, subset_copied)


def test_under_autocast_the_factors_come_cast_once_and_give_the_same_logits(tiny, pixels, monkeypatch):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tiny(pixels, task_chunk=5)  # the bf16 copy of the cache is made here, once
        spy = MatmulSpy(monkeypatch)
        cast_once = tiny(pixels, task_chunk=5)
    assert all(f.dtype == torch.bfloat16 for f in spy.at + spy.bt)
    assert _reads_only_the_cache(spy, tiny, torch.bfloat16)
    # the same as fp32 factors that autocast casts inside every matmul
    monkeypatch.setattr(type(tiny), "_compute_dtype", lambda self: torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cast_per_op = tiny(pixels, task_chunk=5)
    assert torch.equal(cast_once, cast_per_op)


def test_factors_cached_under_autocast_are_generated_in_fp32_and_cast_once(tiny, pixels):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tiny(pixels, task_chunk=5)  # the cache is first filled here, under autocast
    with torch.no_grad():
        tiny(pixels, task_chunk=5)
        exact = tiny.lora_factors(None).grouped()  # the hypernetwork in fp32
    cache = tiny._factor_cache.full
    assert set(cache) == {torch.bfloat16, torch.float32}
    for kind in exact.at:
        assert torch.equal(cache[torch.float32].at[kind], exact.at[kind])
        assert torch.equal(cache[torch.bfloat16].at[kind], exact.at[kind].to(torch.bfloat16))
        assert torch.equal(cache[torch.bfloat16].bt[kind], exact.bt[kind].to(torch.bfloat16))


def test_bf16_backbone_weights_keep_the_hypernetwork_and_head_fp32_and_stay_close(tiny, pixels, monkeypatch):
    with torch.no_grad():
        ref = tiny(pixels)
    low = copy.deepcopy(tiny).to_inference_dtype(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in low.backbone.parameters())
    assert all(p.dtype == torch.float32 for p in (*low.hypernet.parameters(), *low.head.parameters()))
    assert all(b.dtype == torch.float32 for b in low.backbone.buffers())  # RoPE frequencies
    spy = MatmulSpy(monkeypatch)
    with torch.no_grad():
        out = low(pixels, task_chunk=5)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert all(f.dtype == torch.bfloat16 for f in spy.at + spy.bt)  # no per-op cast to the activations
    assert _reads_only_the_cache(spy, low, torch.bfloat16)
    assert list(low._factor_cache.full) == [torch.bfloat16]  # generated in fp32, kept in bf16 only
    diff = (out - ref).abs().max().item()
    assert 0 < diff < 0.02  # bf16 rounding (measured 0.004 on this model)
