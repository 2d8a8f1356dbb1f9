"""Where the model runs: device resolution, autocast, and how many tasks go through one pass."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TypeVar

import torch

from hyperct.errors import ModelError

T = TypeVar("T")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` fails clearly when no GPU is usable."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelError(
                f"device {spec!r} requested but PyTorch sees no CUDA GPU",
                hint="use --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU",
            )
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    raise ModelError(f"unknown device {spec!r}", hint="use auto, cuda, cuda:N or cpu")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU multiplies bf16 in hardware (x86: the avx512_bf16 or amx_bf16 flag; Arm: bf16),
    from ``/proc/cpuinfo`` (or the text ``cpuinfo``); None where that cannot be read. Without it
    PyTorch emulates bf16 matmuls: measured 0.4 against 90 GFLOP/s fp32 on an AVX2-only EPYC
    (benchmarks/results/inference_cpu_demo_v07.json), a bf16-weights pass 9x slower than fp32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read(1 << 20)
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def autocast_for(device: torch.device, amp: str = "auto"):
    """The autocast context of a pass on ``device``: ``amp`` "auto" (default) is bf16 on CUDA and
    plain fp32 elsewhere; "bf16" is bf16 on the CPU too; "off" is always fp32."""
    if amp == "off":
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if amp == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def default_task_chunk(device: torch.device, model, batch: int = 1) -> int:
    """Tasks per backbone pass: all 25 on a GPU (one large batched pass). On a CPU, small chunks whose
    largest activation (batch x 55 images x 86 tokens x MLP width) stays around 16 MB run fastest
    (measured: demo config, 2 cores, one scan: 1.5 s with 1-3 tasks per pass vs 3.8 s with all 25)."""
    if device.type == "cuda":
        return 25
    per_task = max(1, int(batch)) * 55 * 86 * model.backbone.config.intermediate_size * 4
    return max(1, min(25, int(16e6 // per_task)))


def task_chunks(tasks: Sequence[T], chunk: int) -> list[Sequence[T]]:
    """``tasks`` in consecutive pieces of at most ``chunk`` (at least 1): one model pass each."""
    chunk = max(1, int(chunk))
    return [tasks[i : i + chunk] for i in range(0, len(tasks), chunk)]
