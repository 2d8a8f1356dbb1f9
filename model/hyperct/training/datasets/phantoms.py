"""``{type: phantom, count: N, first_seed: S, ...}``: synthetic phantoms from ``hyperct.phantom``,
generated once into the preprocessing cache (with their labels and per-token finding masks), in
pairs that share the anatomy when asked (``pair``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from hyperct.errors import DatasetError
from hyperct.findings import catalogue
from hyperct.preprocess import N_IMAGES, resample_hu
from hyperct.training.cache import PreprocessCache
from hyperct.training.datasets.base import MISSING, N_FINDINGS, VolumeDataset


def phantom_version() -> str:
    """The generator version that cache keys of phantoms carry (a new generator, new keys)."""
    from hyperct.phantom import GENERATOR_VERSION

    return str(GENERATOR_VERSION)


class PhantomDataset(VolumeDataset):
    """``count`` synthetic phantoms with seeds ``first_seed`` .. ``first_seed + count - 1``.

    ``findings``: None = the generator's own draw (realistic prevalence, some labels missing);
    a mapping ``{finding_id: prevalence}`` = each listed finding is switched on independently
    with that probability (drawn from the seed), every other finding is absent, so all 25 labels
    are known; a list = those findings in every phantom. ``severity: [lo, hi]`` draws the
    severity of switched-on findings uniformly in that range (default: the generator's draw).
    ``n_slices`` fixes the slice count (default: the generator's clinical slice spacing).
    """

    kind = "phantom"

    def __init__(
        self,
        count: int,
        first_seed: int = 0,
        *,
        matrix: int = 256,
        n_slices: int | None = None,
        findings: Any = None,
        severity: list[float] | tuple[float, float] | None = None,
        cache: PreprocessCache | None = None,
        prepare: bool = True,
        rank: int = 0,
        world: int = 1,
        barrier: Callable[[], None] | None = None,
        progress: bool = False,
        workers: int = 1,
        pair: str | None = None,
    ):
        if int(count) < 1:
            raise DatasetError(f"phantom count must be >= 1, got {count}")
        if pair not in PAIRS:
            raise DatasetError(f"phantom pair must be null, 'normal', 'variant' or 'drop_one', got {pair!r}")
        last = int(first_seed) + int(count) - 1
        source = f"phantoms seeds {first_seed}..{last} matrix {matrix}"
        super().__init__(source=source + (f" in pairs ({pair} twin)" if pair else ""), cache=cache)
        self.pair = pair
        seeds = list(range(int(first_seed), int(first_seed) + int(count)))
        # item i: seed self.seeds[i]; twin[i]: 0 = as drawn, 1 = the pair's twin
        self.seeds = [s for s in seeds for _ in range(2)] if pair else seeds
        self.twin = [i % 2 for i in range(len(self.seeds))] if pair else [0] * len(self.seeds)
        self.matrix = int(matrix)
        self.n_slices = None if n_slices is None else int(n_slices)
        self.findings = _check_phantom_findings(findings)
        self.severity = None if severity is None else [float(severity[0]), float(severity[1])]
        self.cache = cache if cache is not None else PreprocessCache(None)
        self.names = [f"phantom-{s}" + (f"-{pair}" if t else "") for s, t in zip(self.seeds, self.twin)]
        self.labels = np.full((len(self.seeds), N_FINDINGS), MISSING, dtype=np.int8)
        self._version = phantom_version()
        self._hearts: dict[int, Any] = {}  # heart(i), drawn once
        if prepare:
            self.prepare(rank=rank, world=world, barrier=barrier, progress=progress, workers=workers)

    def identity(self, i: int) -> dict:
        ident = {
            "phantom": self._version,
            "seed": self.seeds[i],
            "matrix": self.matrix,
            "n_slices": self.n_slices,
            "findings": self.findings,
            "severity": self.severity,
        }
        if self.twin[i]:  # (the drawn item keeps the key of an unpaired dataset's phantom)
            ident["twin"] = self.pair
        elif self.pair == "drop_one":  # rendered from its explicit draw: not the random-mode phantom
            ident["explicit_draw"] = True
        return ident

    def pair_of(self, i: int) -> int:
        """The index of item ``i``'s twin (``pair`` datasets only)."""
        if not self.pair:
            raise ValueError("this phantom dataset has no pairs (pair: null)")
        return i ^ 1

    def findings_for(self, i: int):
        """What ``generate`` is asked for phantom ``i`` (None = the generator's random draw)."""
        if self.twin[i] and self.pair == "normal":
            return {}
        if self.pair == "drop_one":
            base = drawn_severities(self.seeds[i]) if self.findings is None else self._requested(i)
            if isinstance(base, list):
                base = dict.fromkeys(base)  # severities drawn from the seed
            if not self.twin[i]:
                return dict(base)
            k = dropped_finding(self.seeds[i], base)
            return {f: v for f, v in base.items() if f != k} if k else {}
        return self._requested(i)

    def heart(self, i: int):
        """The ``HeartShape`` phantom ``i`` renders (``hyperct.phantom.generator.heart_of``: drawn
        without rendering; drawn once per phantom, as training asks for it every step)."""
        from hyperct.phantom.generator import heart_of

        if i not in self._hearts:
            self._hearts[i] = heart_of(self.seeds[i], self.findings_for(i))
        return self._hearts[i]

    def heart_slices(self, i: int) -> np.ndarray:
        """(55, len(SLICE_FIELDS)) float32: the mL of each heart structure inside each model image of
        phantom ``i`` (``hyperct.training.heart_slices``; from the generator's geometry, nothing rendered;
        kept in the cache beside the phantom)."""
        from hyperct.training.heart_slices import HEART_SLICES, SLICE_FIELDS, phantom_image_volumes

        return self._cached_array(
            i,
            HEART_SLICES,
            (N_IMAGES, len(SLICE_FIELDS)),
            lambda: phantom_image_volumes(
                self.seeds[i], self.findings_for(i), matrix=self.matrix, n_slices=self.n_slices
            ),
        )

    def _cached_array(self, i: int, name: str, shape: tuple, compute) -> np.ndarray:
        """Phantom ``i``'s array ``name`` from the cache, or ``compute()`` kept there when it is missing,
        of another shape or not finite (damaged, or an older version); float32."""
        key = self._key(i)
        got = self.cache.get_array(key, name)
        if got is None or got.shape != shape or not np.isfinite(got).all():
            got = compute()
            self.cache.put_array(key, name, got)
        return np.asarray(got, dtype=np.float32)

    def station_tissue(self, i: int) -> np.ndarray:
        """(55, len(STATION_FIELDS)) float32: the mL of soft tissue near each central lymph-node station
        inside each model image of phantom ``i`` (``hyperct.training.station_tissue``; from its model-grid
        HU and the generator's stations; kept in the cache beside the phantom)."""
        return self._stations(i)[0]

    def station_offsets(self, i: int) -> np.ndarray:
        """(55, len(STATION_FIELDS)) float32: how far (mm, along z) each model image's middle slice of
        phantom ``i`` lies from each central lymph-node station (``station_tissue.image_offsets_mm``;
        kept in the cache beside the phantom)."""
        return self._stations(i)[1]

    def station_excess(self, i: int) -> np.ndarray:
        """(55, len(STATION_FIELDS)) float32: ``station_tissue`` minus the mL expected at each image's z
        offset from each station in phantoms without enlarged nodes (``station_tissue.station_excess_ml``)."""
        from hyperct.training.station_tissue import station_excess_ml

        return station_excess_ml(*self._stations(i))

    def teacher_features(self, i: int) -> np.ndarray:
        """(55, N_FEATURES) float32: the active stage-1 teacher's feature of each model image of phantom
        ``i`` (``hyperct.training.teacher``; kept in the cache beside the phantom, named by the teacher)."""
        from hyperct.training.teacher import N_FEATURES, active, teacher_cache_name

        return self._cached_array(
            i, teacher_cache_name(), (N_IMAGES, N_FEATURES), lambda: active().features(self.model_hu(i))
        )

    def _stations(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from hyperct.training.station_tissue import (
            STATION_FIELDS,
            STATION_OFFSETS,
            STATION_TISSUE,
            phantom_stations,
        )

        key, shape = self._key(i), (N_IMAGES, len(STATION_FIELDS))
        got = [self.cache.get_array(key, name) for name in (STATION_TISSUE, STATION_OFFSETS)]
        if any(a is None or a.shape != shape or not np.isfinite(a).all() for a in got):
            got = phantom_stations(
                self.model_hu(i),
                self.seeds[i],
                self.findings_for(i),
                matrix=self.matrix,
                n_slices=self.n_slices,
            )
            self.cache.put_array(key, STATION_TISSUE, got[0])
            self.cache.put_array(key, STATION_OFFSETS, got[1])
        return np.asarray(got[0], dtype=np.float32), np.asarray(got[1], dtype=np.float32)

    def _requested(self, i: int):
        if not isinstance(self.findings, dict):
            return self.findings
        rng = np.random.default_rng([self.seeds[i], 0xF1D5])
        chosen = {}
        for fid in catalogue().ids:  # catalogue order: independent of the mapping's order
            if fid not in self.findings:
                continue
            on = rng.random() < float(self.findings[fid])
            sev = float(rng.uniform(*self.severity)) if self.severity else None
            if on:
                chosen[fid] = sev
        return chosen

    def generate(self, i: int):
        import hyperct.phantom as ph

        kwargs: dict[str, Any] = {"matrix": self.matrix}
        if self.n_slices is not None:
            kwargs["n_slices"] = self.n_slices
        if self.twin[i] and self.pair == "variant":
            kwargs["lesion_variant"] = 1
        request = self.findings_for(i)
        return ph.generate(self.seeds[i], request, **kwargs)

    def read_hu(self, i: int) -> np.ndarray:
        return self.generate(i).volume.hu

    def _fill(self, i: int) -> np.ndarray:
        from hyperct.training.token_labels import FINEST_PATCH, TOKEN_LABELS, token_labels

        out = self.generate(i)
        labels = np.asarray(out.labels, dtype=np.int8).reshape(-1)
        if labels.size != N_FINDINGS:
            raise DatasetError(f"phantom {self.seeds[i]}: {labels.size} labels, expected {N_FINDINGS}")
        hu = resample_hu(out.volume.hu).numpy()
        # where each finding is, per model token of the finest patch (for backbone pretraining)
        fine = token_labels(out.masks, out.volume.shape, patch=FINEST_PATCH)
        self.cache.put_array(self._key(i), TOKEN_LABELS, np.packbits(fine))
        self.cache.put(self._key(i), hu, dict(self.cache_info(i), labels=labels.tolist()))
        return labels

    def cached_labels(self, i: int) -> np.ndarray | None:
        """Phantom ``i``'s labels when the cache holds it with its finest token labels, else None."""
        from hyperct.training.token_labels import TOKEN_LABELS

        info = self.cache.get_info(self._key(i))
        if info is None or "labels" not in info or self.cache.get_array(self._key(i), TOKEN_LABELS) is None:
            return None
        return np.asarray(info["labels"], dtype=np.int8)

    def token_labels(self, i: int, patch: int = 16) -> np.ndarray:
        """(55, G, G, 25) bool, G = 144 / ``patch``: finding masks per model token of a backbone with
        that patch size (the generator's ground truth)."""
        from hyperct.training.token_labels import (
            FINEST_PATCH,
            PATCH16_LABELS,
            TOKEN_LABELS,
            coarsen,
            unpack,
        )

        packed = self.cache.get_array(self._key(i), TOKEN_LABELS)
        if packed is None and patch == 16:  # a phantom cached before the finest labels were kept
            old = self.cache.get_array(self._key(i), PATCH16_LABELS)
            if old is not None:
                return unpack(old, 16)
        if packed is None:
            self._fill(i)
            packed = self.cache.get_array(self._key(i), TOKEN_LABELS)
        fine = unpack(packed, FINEST_PATCH)
        return fine if patch == FINEST_PATCH else coarsen(fine, patch)

    def prepare(
        self, *, rank: int = 0, world: int = 1, barrier=None, progress: bool = False, workers: int = 1
    ) -> None:
        """Generate every phantom not in the cache yet (shared between ranks, and between ``workers``
        processes when the cache is on disk), then read the labels."""
        from hyperct.training.token_labels import PATCH16_LABELS, TOKEN_LABELS

        def missing(i: int) -> bool:  # (patch-16 labels of an older cache will do until a finer patch asks)
            key = self._key(i)
            if not self.cache.contains(key):
                return True
            return all(self.cache.get_array(key, name) is None for name in (TOKEN_LABELS, PATCH16_LABELS))

        todo = [i for i in range(len(self)) if missing(i)]
        mine = todo if self.cache.directory is None else todo[rank::world]
        bar = None
        if progress and mine:
            from hyperct.training.progress import progress_bar

            bar = progress_bar(total=len(mine), desc=f"phantoms ({self.source})", unit="vol")
        left = list(mine)
        if workers > 1 and self.cache.directory is not None and len(mine) > 1:
            left = self._fill_in_workers(mine, workers, bar)
        for i in left:  # all of them without workers; what a lost worker did not generate
            self.labels[i] = self._fill(i)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        if barrier is not None and world > 1:
            barrier()
        for i in range(len(self)):
            info = self.cache.get_info(self._key(i))
            if info is None or "labels" not in info:
                self.labels[i] = self._fill(i)
            else:
                self.labels[i] = np.asarray(info["labels"], dtype=np.int8)
        self.check_has_labels()

    def _fill_in_workers(self, todo: list[int], workers: int, bar) -> list[int]:
        """Generate ``todo`` in ``workers`` processes; returns the indices left undone when a worker
        process died (killed, out of memory), which the caller generates itself instead of waiting
        for them forever. An error in a phantom's generation is raised."""
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        state = self.worker_state()
        done: set[int] = set()
        pool = worker_pool(min(workers, len(todo)))
        try:
            for future in as_completed([pool.submit(_fill_in_worker, (state, i)) for i in todo]):
                i, labels = future.result()
                self.labels[i] = labels
                done.add(i)
                if bar is not None:
                    bar.update(1)
        except BrokenProcessPool:
            import warnings

            warnings.warn(
                "phantom generation: a worker process died; generating the rest in this process",
                RuntimeWarning,
                stacklevel=3,
            )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [i for i in todo if i not in done]

    def worker_state(self) -> tuple:
        """What a worker process needs to rebuild this dataset (``_fill_in_worker``)."""
        first, count = self.seeds[0], len(self.seeds) // (2 if self.pair else 1)
        return (
            first,
            count,
            self.matrix,
            self.n_slices,
            self.findings,
            self.severity,
            str(self.cache.directory),
            self.cache.dtype,
            self.cache.compress,
            self.pair,
        )


def worker_pool(workers: int):
    """A pool of ``workers`` phantom-generating processes (spawned, one thread each, leaving with
    their parent; ``_quiet_worker``) for ``_fill_in_worker`` jobs."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_quiet_worker)


def _quiet_worker() -> None:
    """Initialiser of the phantom-generating worker processes: one thread each, and they leave when
    the process that started them is gone (a training run killed with SIGTERM must not leave orphans
    generating phantoms into the cache)."""
    torch.set_num_threads(1)
    _exit_with_parent()


def _exit_with_parent(interval: float = 1.0) -> None:
    """A daemon thread that ends this process once its parent has died (it is re-parented). The
    parent is the process that started this one (``multiprocessing.parent_process``), so a worker
    whose parent died while it was still starting up leaves too."""
    import multiprocessing as mp
    import os
    import threading
    import time

    starter = mp.parent_process()
    parent = starter.pid if starter is not None else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_dataset(state: tuple) -> PhantomDataset:
    """The dataset ``PhantomDataset.worker_state`` describes, rebuilt in a worker process."""
    first, count, matrix, n_slices, findings, severity, directory, dtype, compress, pair = state
    return PhantomDataset(
        count,
        first,
        matrix=matrix,
        n_slices=n_slices,
        findings=findings,
        severity=severity,
        cache=PreprocessCache(directory, dtype, compress=compress),
        prepare=False,
        pair=pair,
    )


def _fill_in_worker(job) -> tuple[int, np.ndarray]:
    """Generate and cache one phantom in a worker process (``PhantomDataset.prepare(workers=N)``)."""
    state, i = job
    ds = _worker_dataset(state)
    # another process (a second run on the same blocks, an A/B arm) may have made it meanwhile
    cached = ds.cached_labels(i)
    return i, cached if cached is not None else ds._fill(i)


def _heart_slices_in_worker(job) -> int:
    """Compute and cache phantom ``i``'s per-image heart shares in a worker process (a block
    prefetched for ``optim.heart_slice_loss_weight``; nothing rendered, so independent of
    ``_fill_in_worker``)."""
    state, i = job
    _worker_dataset(state).heart_slices(i)
    return i


def _station_tissue_in_worker(job) -> int:
    """Compute and cache phantom ``i``'s per-image station tissue in a worker process (a block
    prefetched for ``optim.station_loss_weight``; reads the phantom's model-grid volume, rendering it
    when no earlier job has)."""
    state, i = job
    _worker_dataset(state).station_tissue(i)
    return i


PAIRS = (None, "normal", "variant", "drop_one")
# findings whose removal changes a phantom only inside their own mask (cardiomegaly reshapes the heart
# and moves its surroundings; the opportunistic findings share the cardiac state)
DROPPABLE = tuple(f.id for f in catalogue() if f.group == "conventional" and f.id != "cardiomegaly")


def drawn_severities(seed: int) -> dict[str, float]:
    """The findings and severities ``hyperct.phantom.generate(seed, None)`` draws (its spec's
    ``severities``), without rendering: the generator's own draw, step by step (tested against it)."""
    from hyperct.phantom import cardiac
    from hyperct.phantom.generator import drawn_state

    hab, echo, conv = drawn_state(int(seed))
    return {**conv, **cardiac.severities(echo, hab.sex)}


def dropped_finding(seed: int, severities: dict) -> str | None:
    """The finding a ``drop_one`` twin of ``seed`` lacks (None when none of its findings can be dropped)."""
    options = [f for f in DROPPABLE if f in severities]
    if not options:
        return None
    return options[int(np.random.default_rng([int(seed), 0xD1]).integers(len(options)))]


def _check_phantom_findings(findings: Any) -> Any:
    if findings is None:
        return None
    ids = catalogue().ids
    names = list(findings) if isinstance(findings, dict | list | tuple) else None
    if names is None:
        raise DatasetError(
            f"phantom findings must be null, a list of ids or a mapping id -> prevalence, got {findings!r}"
        )
    bad = [f for f in names if f not in ids]
    if bad:
        near = difflib.get_close_matches(str(bad[0]), ids, n=1)
        raise DatasetError(
            f"unknown finding id {bad[0]!r} in the phantom findings"
            + (f" (did you mean {near[0]!r}?)" if near else "")
        )
    if isinstance(findings, dict):
        for f, p in findings.items():
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
                raise DatasetError(f"phantom prevalence of {f!r} must be a number in [0, 1], got {p!r}")
        return {f: float(findings[f]) for f in ids if f in findings}
    return [f for f in ids if f in names]
