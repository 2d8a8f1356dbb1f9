"""HyperCT: a DINOv3 ViT whose q/k/v/o and MLP projections get task-specific LoRA updates generated
by a hypernetwork, followed by a task-shared head on the mean CLS feature of the 55 slice triplets.

Scoring any set of tasks for a batch of volumes is ONE backbone pass: the patch embedding (the only
task-independent part) is computed once, the token batch is laid out task-major, and every
``MultiTaskLoRALinear`` applies its base weight to all rows and the low-rank terms per task group.
The generated factors do not depend on the scan, so in inference they are generated once per loaded
checkpoint and cached (invalidated automatically when the hypernetwork's parameters change), stored
in the layout and dtype the LoRA matmuls read, so a forward hands them over without copying.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface, DINOv3ViTModel

from hyperct.findings import NUM_FINDINGS
from hyperct.network.backbone import build_backbone, config_to_dict, encoder_layers
from hyperct.network.hypernet import HyperNetwork, LoRAFactors
from hyperct.network.lora import LORA_TARGETS, GroupFactors, LoRAState, MultiTaskLoRALinear, wrap_backbone

N_IMAGES = 55  # 165 slices / 3 (non-overlapping RGB triplets)


@dataclass
class HyperCTConfig:
    """Architecture hyperparameters (recorded in every checkpoint manifest)."""

    backbone: str | dict = "vitb16"
    n_tasks: int = NUM_FINDINGS
    task_dim: int = 512
    pos_dim: int = 64
    hyper_hidden: int = 64
    rank: int = 16
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HyperCTConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class SaliencyTap(nn.Identity):
    """Identity on the patch-token grid at one point of one block (see ``HyperCT.saliency_mode``).

    captum's layer methods attach here: channels = D; spatial = the 9x9 patch grid of each image
    ((N, D, 9, 9)), or the 55 x 9 x 9 grid of each volume ((V, D, 55, 9, 9)) with ``per_volume``.
    Only on the forward path while ``HyperCT.saliency_mode()`` is active.
    """


ATTENTION_RECORDER = "hyperct_recorded_eager"


def _recorded_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain softmax attention that hands its probabilities to ``module._hyperct_attention_sink``.

    Registered with transformers' ``AttentionInterface``; used only inside
    ``HyperCT.recording_attention()`` (gradient-weighted attention maps need the probabilities and
    their gradients, which fused SDPA kernels do not expose).
    """
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    sink = getattr(module, "_hyperct_attention_sink", None)
    if sink is not None:
        sink.append(probs)
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


AttentionInterface.register(ATTENTION_RECORDER, _recorded_eager_attention)


def _consecutive(ids: list[int]) -> bool:
    return bool(ids) and ids == list(range(ids[0], ids[0] + len(ids)))


class FactorCache:
    """Every task's generated LoRA factors for one state of the hypernetwork, as the layers read them.

    Stored contiguous in the (L, T, ...) layout of ``GroupFactors``, in the dtype the matmuls run in
    (the backbone's dtype, or the autocast dtype inside autocast): the hypernetwork runs once per
    dtype asked for (``generate``), and its output is moved in one kind at a time (each kind's
    generated block is freed as soon as it is copied), so only the cache itself stays. A chunk of
    consecutive tasks (how scoring chunks all 25 findings) is then a view whose slice for each layer
    is one contiguous block: the LoRA matmuls read the cache itself. Any other task list is gathered once and
    remembered (a few lists, at most ``n_tasks`` tasks in all), so a repeated forward does not copy.
    """

    def __init__(self, key: tuple):
        self.key = key
        self.full: dict[torch.dtype, GroupFactors] = {}
        self._gathered: OrderedDict[tuple, GroupFactors] = OrderedDict()

    def all_tasks(self, dtype: torch.dtype, generate: Callable[[], GroupFactors]) -> GroupFactors:
        """All tasks' factors in ``dtype``; ``generate()``: all tasks' factors from the hypernetwork."""
        if dtype not in self.full:
            generated = generate()

            def as_read(t: torch.Tensor) -> torch.Tensor:  # one copy: contiguous, in dtype
                return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t)

            at, bt = {}, {}
            for kind in list(generated.at):
                at[kind] = as_read(generated.at.pop(kind))
                bt[kind] = as_read(generated.bt.pop(kind))
            self.full[dtype] = GroupFactors(at, bt, generated.scale)
        return self.full[dtype]

    def factors(
        self,
        ids: list[int] | None,
        index: torch.Tensor,
        dtype: torch.dtype,
        generate: Callable[[], GroupFactors],
        *,
        remember: bool,
    ) -> GroupFactors:
        """Factors of tasks ``ids`` (``index``: the same ids as a tensor on the cache's device;
        ``ids`` None: not known on the host, gathered from ``index``)."""
        full = self.all_tasks(dtype, generate)
        if ids is None:
            return full.select(index)
        if _consecutive(ids):
            return full.narrow(ids[0], len(ids))
        if not remember:
            return full.select(index)
        key = (dtype, tuple(ids))
        hit = self._gathered.get(key)
        if hit is None:
            hit = full.select(index)
            self._gathered[key] = hit
            n_tasks = full.n_groups
            while sum(len(k[1]) for k in self._gathered) > n_tasks and len(self._gathered) > 1:
                self._gathered.popitem(last=False)
        self._gathered.move_to_end(key)
        return hit


class HyperCT(nn.Module):
    def __init__(self, config: HyperCTConfig | None = None, backbone: DINOv3ViTModel | None = None):
        super().__init__()
        self.config = config or HyperCTConfig()
        self.backbone = backbone if backbone is not None else build_backbone(self.config.backbone)
        if isinstance(self.config.backbone, str) is False:
            self.config.backbone = config_to_dict(self.backbone.config)
        bcfg = self.backbone.config
        self.hidden_size = bcfg.hidden_size
        self.n_prefix = 1 + bcfg.num_register_tokens
        self.patch_size = bcfg.patch_size
        self.lora_state = LoRAState()
        layers = encoder_layers(self.backbone)
        self._wrapped = wrap_backbone(layers, self.lora_state, list(self.config.targets))
        dims = {
            k: (self._wrapped[(0, k)].in_features, self._wrapped[(0, k)].out_features)
            for k in self.config.targets
        }
        self.hypernet = HyperNetwork(
            self.config.n_tasks,
            len(layers),
            dims,
            task_dim=self.config.task_dim,
            pos_dim=self.config.pos_dim,
            hidden=self.config.hyper_hidden,
            rank=self.config.rank,
            alpha=self.config.alpha,
        )
        self.head = nn.Sequential(nn.LayerNorm(self.hidden_size), nn.Linear(self.hidden_size, 1))
        self.saliency_tap = SaliencyTap()
        self._tap_active = False
        self._tap_block: int | None = None  # None: the last block
        self._tap_site = "input"  # "input" of the block (residual stream) or its "norm1" output
        self._tap_per_volume = False
        self._tap_images = 0  # images per volume of the current pass (per-volume tap layout)
        self._factor_cache: FactorCache | None = None
        # One backbone pass at a time: the LoRA factors are handed to the layers through shared
        # state, so concurrent callers (e.g. two viewer workers) must not interleave.
        self._forward_lock = threading.RLock()
        self.set_backbone_trainable(False)

    def __getstate__(self) -> dict:  # deepcopy / pickle: the lock and the factor cache are not state
        state = self.__dict__.copy()
        state.pop("_forward_lock", None)
        state["_factor_cache"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._forward_lock = threading.RLock()

    # -- parameters -------------------------------------------------------------------------
    def set_backbone_trainable(self, trainable: bool) -> None:
        """Frozen (the paper) or trainable (allowed for the demo model only)."""
        for p in self.backbone.parameters():
            p.requires_grad_(trainable)

    @property
    def backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> HyperCT:
        super().train(mode)
        # The backbone always runs in eval mode: DINOv3's RoPE jitters patch coordinates in training
        # mode, which would make a frozen backbone non-deterministic.
        self.backbone.eval()
        return self

    def parameter_counts(self) -> dict[str, int]:
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        return {
            "backbone": count(self.backbone.parameters()),
            "hypernetwork": count(self.hypernet.parameters()),
            "head": count(self.head.parameters()),
            "trainable": count(p for p in self.parameters() if p.requires_grad),
            "total": count(self.parameters()),
        }

    # -- LoRA factors -----------------------------------------------------------------------
    def lora_factors(self, tasks: torch.Tensor | None = None) -> LoRAFactors:
        """Generated factors for ``tasks`` (all tasks when None), with gradients if enabled."""
        if tasks is None:
            tasks = torch.arange(self.config.n_tasks, device=self._device)
        return self.hypernet(tasks.to(self._device))

    def _cache_key(self) -> tuple:
        return (self._device, tuple(p._version for p in self.hypernet.parameters()), id(self.hypernet))

    def _grouped_factors(
        self, tasks: torch.Tensor, ids: list[int] | None = None, *, remember: bool = False
    ) -> GroupFactors:
        """Per-task factors, from the cache unless the hypernetwork must get gradients.

        ``ids``: ``tasks`` as a host list (read from ``tasks`` when they are on the CPU; otherwise
        None gathers them on the device, without a sync). From the cache, consecutive tasks come as
        views of it; other lists are gathered (and kept when ``remember``). The factors come in the
        dtype the LoRA matmuls run in (see ``FactorCache``).
        """
        needs_grad = (
            torch.is_grad_enabled()
            and not self._tap_active  # saliency: gradients w.r.t. activations only, factors are constants
            and any(p.requires_grad for p in self.hypernet.parameters())
        )
        if needs_grad:
            return self.lora_factors(tasks).grouped()
        key = self._cache_key()
        if ids is None and tasks.device.type == "cpu":
            ids = [int(t) for t in tasks.tolist()]
        index = tasks.to(self._device)
        # Everything the cache holds is made outside inference mode: a cache filled while scoring
        # (torch.inference_mode) is reused by the saliency pass, whose backward cannot save inference
        # tensors. Generated under no_grad, so the factors stay constants either way.
        with torch.inference_mode(False), torch.no_grad():
            if self._factor_cache is None or self._factor_cache.key != key:
                self._factor_cache = FactorCache(key)  # frees the old factors; new ones made on first read
            return self._factor_cache.factors(
                ids, index, self._compute_dtype(), self._generate_all_factors, remember=remember
            )

    def _generate_all_factors(self) -> GroupFactors:
        """Every task's factors in the hypernetwork's own dtype, also inside autocast (the cache
        casts them once to what the matmuls read; the result does not depend on the first caller)."""
        with torch.autocast(self._device.type, enabled=False):
            return self.lora_factors(None).grouped()

    def _compute_dtype(self) -> torch.dtype:
        """The dtype the backbone's matmuls run in: the autocast dtype inside autocast, else the weights'."""
        dev = self._device.type
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
        return self.backbone.embeddings.patch_embeddings.weight.dtype

    def clear_factor_cache(self) -> None:
        self._factor_cache = None

    @torch.no_grad()
    def to_inference_dtype(self, dtype: torch.dtype) -> HyperCT:
        """Backbone weights in ``dtype`` (e.g. ``torch.bfloat16``) for inference, in place; returns self.

        The backbone then runs in ``dtype`` end to end (no autocast, no per-op casts); the
        hypernetwork, the head and the RoPE frequencies stay in their dtype (fp32), so the LoRA
        factors are generated in fp32 and cast once into the factor cache (which then holds them in
        ``dtype`` only). Inference only.
        """
        for p in self.backbone.parameters():
            p.data = p.data.to(dtype)
        self.clear_factor_cache()
        return self

    @property
    def _device(self) -> torch.device:
        return self.hypernet.task_embeddings.device

    # -- forward ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def saliency_mode(self, block: int | None = None, *, site: str = "input", per_volume: bool = False):
        """Route the patch tokens at block ``block`` (default: the last) through ``saliency_tap``.

        ``site``: ``"input"`` taps the block's input (the residual stream, = output of the block
        before), ``"norm1"`` the output of its first LayerNorm (what its attention reads).
        ``per_volume``: the tap sees (V, D, images, 9, 9) instead of (N, D, 9, 9), so a captum layer
        method that averages over the spatial axes (Grad-CAM) averages over the whole volume.
        Inside, the LoRA factors are constants: gradients flow to activations only.
        """
        layers = encoder_layers(self.backbone)
        n_blocks = len(layers)
        if block is not None and not 0 <= int(block) < n_blocks:
            raise ValueError(
                f"block must be between 0 and {n_blocks - 1} (this backbone has {n_blocks}), got {block}"
            )
        if site not in ("input", "norm1"):
            raise ValueError(f"site must be 'input' or 'norm1', got {site!r}")
        self._tap_active = True
        self._tap_block = None if block is None else int(block)
        self._tap_site = site
        self._tap_per_volume = bool(per_volume)
        hook = None
        if site == "norm1":
            target = layers[n_blocks - 1 if block is None else int(block)].norm1
            hook = target.register_forward_hook(lambda _m, _i, out: self._tap(out))
        try:
            yield self.saliency_tap
        finally:
            if hook is not None:
                hook.remove()
            self._tap_active = False
            self._tap_block = None
            self._tap_site = "input"
            self._tap_per_volume = False

    @contextlib.contextmanager
    def recording_attention(self):
        """Record every block's attention probabilities (B*images, heads, tokens, tokens), in order.

        Yields the list the forward pass appends to. Attention runs as plain (eager) softmax
        attention while recording; the model's own implementation is restored afterwards. Holds the
        forward lock so that no other caller runs through the switched implementation.
        """
        layers = encoder_layers(self.backbone)
        sink: list[torch.Tensor] = []
        cfg = self.backbone.config
        with self._forward_lock:
            before = cfg._attn_implementation
            cfg._attn_implementation = ATTENTION_RECORDER
            for layer in layers:
                layer.attention._hyperct_attention_sink = sink
            try:
                yield sink
            finally:
                cfg._attn_implementation = before
                for layer in layers:
                    layer.attention._hyperct_attention_sink = None

    def _tap(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        side = int(round((t - self.n_prefix) ** 0.5))
        prefix, patches = h[:, : self.n_prefix], h[:, self.n_prefix :]
        grid = patches.transpose(1, 2).reshape(n, d, side, side)
        if self._tap_per_volume and self._tap_images:
            m = self._tap_images
            vol = grid.reshape(n // m, m, d, side, side).transpose(1, 2)  # (V, D, images, side, side)
            grid = self.saliency_tap(vol).transpose(1, 2).reshape(n, d, side, side)
        else:
            grid = self.saliency_tap(grid)
        return torch.cat([prefix, grid.reshape(n, d, side * side).transpose(1, 2)], dim=1)

    def _blocks(self, h: torch.Tensor, pos: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        layers = encoder_layers(self.backbone)
        tap_at = len(layers) - 1 if self._tap_block is None else self._tap_block
        for i, layer in enumerate(layers):
            if i == tap_at and self._tap_active and self._tap_site == "input":
                h = self._tap(h)
            out = layer(h, position_embeddings=pos)
            h = out[0] if isinstance(out, tuple) else out
        return self.backbone.norm(h)

    def _embed(
        self, pixel_values: torch.Tensor, embedded: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], int]:
        if embedded:
            return self._embedded(pixel_values)
        if pixel_values.ndim != 5 or pixel_values.shape[2] != 3:
            raise ValueError(
                f"expected (batch, images, 3, H, W) pixel values, got {tuple(pixel_values.shape)}"
            )
        b, n_img = pixel_values.shape[:2]
        flat = pixel_values.reshape(b * n_img, *pixel_values.shape[2:])
        flat = flat.to(self.backbone.embeddings.patch_embeddings.weight.dtype)
        h0 = self.backbone.embeddings(flat)  # (B*55, 86, D): shared by every task
        pos = self.backbone.rope_embeddings(flat)
        return h0, pos, n_img

    def _embedded(self, tokens: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], int]:
        """``_embed`` for tokens from ``embed_images``: the square patch grid they hold gives the
        image size the rotary position embedding needs."""
        emb = self.backbone.embeddings
        d = emb.patch_embeddings.weight.shape[0]
        extra = 1 + emb.register_tokens.shape[1]
        if tokens.ndim != 4 or tokens.shape[-1] != d or tokens.shape[2] <= extra:
            raise ValueError(
                f"expected (batch, images, tokens, {d}) embedded tokens, got {tuple(tokens.shape)}"
            )
        side = round((tokens.shape[2] - extra) ** 0.5)
        if side * side != tokens.shape[2] - extra:
            raise ValueError(f"embedded tokens: {tokens.shape[2] - extra} patch tokens are not a square grid")
        b, n_img = tokens.shape[:2]
        h0 = tokens.reshape(b * n_img, *tokens.shape[2:]).to(emb.patch_embeddings.weight.dtype)
        size = side * self.backbone.config.patch_size
        pos = self.backbone.rope_embeddings(h0.new_empty((1, 3, size, size)))
        return h0, pos, n_img

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The task-independent input stage (HU windows, patch embedding, CLS and register tokens):
        (B, 55, 3, H, W) pixel values -> (B, 55, tokens, D). ``forward(tokens, ..., embedded=True)``
        takes them in place of the pixels (``hyperct.training.embedding_cache``); they depend only on
        the backbone's embedding weights, which LoRA does not adapt."""
        h0, _, n_img = self._embed(pixel_values.to(self._device))
        return h0.reshape(-1, n_img, *h0.shape[1:])

    def pooled_features(
        self,
        pixel_values: torch.Tensor,
        tasks: torch.Tensor | None = None,
        *,
        paired: bool = False,
        task_chunk: int | None = None,
        embedded: bool = False,
    ) -> torch.Tensor:
        """Task-conditioned scan features (mean CLS over the images).

        ``paired=False``: every task in ``tasks`` for every volume -> (B, T, D).
        ``paired=True``: ``tasks[b]`` for volume ``b`` -> (B, D).
        ``embedded=True``: ``pixel_values`` are ``embed_images`` tokens (B, 55, tokens, D).
        """
        dev = self._device
        if tasks is None:
            tasks = range(self.config.n_tasks)
        # The task ids on the host pick the cached factors. Tasks given on a GPU cost one sync per
        # call to read, before any work of the call is queued; paired mode gathers them without.
        on_host = not (isinstance(tasks, torch.Tensor) and tasks.device.type != "cpu")
        ids = None
        if on_host or not paired:
            ids = [int(t) for t in torch.as_tensor(tasks).reshape(-1).tolist()]
        tasks = torch.as_tensor(tasks, device=dev, dtype=torch.long).reshape(-1)
        with self._forward_lock:
            return self._pooled_features_locked(
                pixel_values, tasks, ids, paired=paired, task_chunk=task_chunk, embedded=embedded
            )

    def _pooled_features_locked(
        self, pixel_values, tasks, ids, *, paired, task_chunk, embedded=False
    ) -> torch.Tensor:
        dev = self._device
        b = pixel_values.shape[0]
        h0, pos, n_img = self._embed(pixel_values.to(dev), embedded)
        d = h0.shape[-1]
        self._tap_images = n_img
        try:
            if paired:
                if tasks.numel() != b:
                    raise ValueError(
                        f"paired scoring needs one task per volume: {tasks.numel()} tasks, {b} volumes"
                    )
                self.lora_state.current = self._grouped_factors(tasks, ids)
                h = self._blocks(h0, pos)
                return h[:, 0].reshape(b, n_img, d).mean(dim=1)
            chunk = task_chunk or tasks.numel()
            outs = []
            for start in range(0, tasks.numel(), chunk):
                sub = tasks[start : start + chunk]
                t = sub.numel()
                self.lora_state.current = self._grouped_factors(
                    sub, None if ids is None else ids[start : start + chunk], remember=True
                )
                h = h0.unsqueeze(0).expand(t, *h0.shape).reshape(t * h0.shape[0], *h0.shape[1:])
                pos_t = tuple(p for p in pos)
                h = self._blocks(h, pos_t)
                outs.append(h[:, 0].reshape(t, b, n_img, d).mean(dim=2))  # (t, B, D)
            return torch.cat(outs, dim=0).transpose(0, 1)
        finally:
            self.lora_state.current = None

    def forward(
        self,
        pixel_values: torch.Tensor,
        tasks: torch.Tensor | None = None,
        *,
        paired: bool = False,
        task_chunk: int | None = None,
        embedded: bool = False,
    ) -> torch.Tensor:
        """Logits: (B, T) for every task in ``tasks`` (default: all 25), or (B,) when ``paired``.
        ``embedded``: ``pixel_values`` are the tokens of ``embed_images``."""
        feats = self.pooled_features(
            pixel_values, tasks, paired=paired, task_chunk=task_chunk, embedded=embedded
        )
        return self.head(feats.to(self.head[0].weight.dtype)).squeeze(-1)  # a no-op unless bf16 weights

    # -- reference implementations (tests, analysis) ----------------------------------------
    def backbone_only_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The plain frozen backbone + head, through transformers' own forward (no LoRA): (B,)."""
        b, n_img = pixel_values.shape[:2]
        out = self.backbone(pixel_values=pixel_values.reshape(b * n_img, *pixel_values.shape[2:]))
        cls = out.last_hidden_state[:, 0].reshape(b, n_img, -1).mean(dim=1)
        return self.head(cls).squeeze(-1)

    @torch.no_grad()
    def merged_backbone(self, task: int) -> DINOv3ViTModel:
        """A copy of the backbone with W + (alpha/r) B A merged in for one task (plain linears)."""
        factors = self.lora_factors(torch.tensor([task], device=self._device))
        merged = copy.deepcopy(self.backbone)
        layers = encoder_layers(merged)
        for (li, kind), _ in self._wrapped.items():
            parent_path, attr = LORA_TARGETS[kind].rsplit(".", 1)
            parent = layers[li].get_submodule(parent_path)
            lin: MultiTaskLoRALinear = getattr(parent, attr)
            plain = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None)
            plain.weight = nn.Parameter(lin.weight + factors.delta_w(kind, li, 0))
            if lin.bias is not None:
                plain.bias = nn.Parameter(lin.bias.clone())
            setattr(parent, attr, plain.to(lin.weight.device))
        return merged

    def merged_logits(self, pixel_values: torch.Tensor, task: int) -> torch.Tensor:
        merged = self.merged_backbone(task)
        b, n_img = pixel_values.shape[:2]
        out = merged(pixel_values=pixel_values.reshape(b * n_img, *pixel_values.shape[2:]).to(self._device))
        cls = out.last_hidden_state[:, 0].reshape(b, n_img, -1).mean(dim=1)
        return self.head(cls).squeeze(-1)
