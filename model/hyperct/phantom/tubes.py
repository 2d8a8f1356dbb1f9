"""Tubes (vessels, airways, bones along a path) and branching trees.

* ``Segments``: cone segments (p0, p1, r0, r1) in body mm.
* ``segments_alpha``: per-segment coverage painted into a shared max-field, each in its own
  bounding box (exact distance to the segment, linear partial-volume ramp one pixel wide).
* ``splat_segments``: tubes thinner than about a pixel are drawn as partial-volume lines
  (trilinear splatting of the cross-section area along the centre line), a few ms for thousands.
* ``grow_tree``: a space-filling branching tree grown by recursive partition of attractor points
  (all nodes of one generation at once, vectorised): each node splits its points along their
  principal axis at a random quantile and moves part of the way towards each half's centroid;
  radii follow Murray's law with flow proportional to the number of points served.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyperct.phantom.grid import Grid

F32 = np.float32


@dataclass
class Segments:
    p0: np.ndarray  # (N, 3) x, y, z mm
    p1: np.ndarray
    r0: np.ndarray  # (N,)
    r1: np.ndarray
    gen: np.ndarray | None = None  # generation (tree depth) of each segment
    node: np.ndarray | None = None  # tree node id of the segment's distal end

    def __len__(self) -> int:
        return len(self.r0)

    @classmethod
    def empty(cls) -> Segments:
        z = np.zeros((0, 3))
        return cls(z, z.copy(), np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0, int))

    @classmethod
    def polyline(cls, pts, radii) -> Segments:
        pts = np.asarray(pts, dtype=np.float64)
        radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
        n = len(pts) - 1
        return cls(pts[:-1], pts[1:], radii[:-1].copy(), radii[1:].copy(), np.zeros(n, int), np.arange(n))

    def select(self, m: np.ndarray) -> Segments:
        return Segments(
            self.p0[m],
            self.p1[m],
            self.r0[m],
            self.r1[m],
            None if self.gen is None else self.gen[m],
            None if self.node is None else self.node[m],
        )

    def scaled(self, factor, add: float = 0.0) -> Segments:
        f = np.broadcast_to(np.asarray(factor, dtype=np.float64), self.r0.shape)
        return Segments(self.p0, self.p1, self.r0 * f + add, self.r1 * f + add, self.gen, self.node)

    @staticmethod
    def concat(items: list[Segments]) -> Segments:
        items = [s for s in items if len(s)]
        if not items:
            return Segments.empty()
        return Segments(
            np.concatenate([s.p0 for s in items]),
            np.concatenate([s.p1 for s in items]),
            np.concatenate([s.r0 for s in items]),
            np.concatenate([s.r1 for s in items]),
            np.concatenate([s.gen if s.gen is not None else np.zeros(len(s), int) for s in items]),
            np.concatenate([s.node if s.node is not None else np.zeros(len(s), int) for s in items]),
        )

    def lo_hi(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        rmax = np.maximum(self.r0, self.r1)[:, None]
        lo = np.minimum(self.p0, self.p1) - rmax - margin
        hi = np.maximum(self.p0, self.p1) + rmax + margin
        return lo, hi


def segment_sd(Z, Y, X, p0, p1, r0, r1):
    """Signed distance (mm, approx.) from voxel centres to a cone segment; broadcast arrays."""
    d = p1 - p0
    L2 = float(d @ d) + 1e-9
    dx = X - F32(p0[0])
    dy = Y - F32(p0[1])
    dz = Z - F32(p0[2])
    t = (dx * F32(d[0]) + dy * F32(d[1]) + dz * F32(d[2])) * F32(1.0 / L2)
    np.clip(t, 0.0, 1.0, out=t)
    ex = dx - t * F32(d[0])
    ey = dy - t * F32(d[1])
    ez = dz - t * F32(d[2])
    dist = np.sqrt(ex * ex + ey * ey + ez * ez)
    return dist - (F32(r0) + t * F32(r1 - r0))


def segments_alpha(
    grid: Grid,
    segs: Segments,
    out: np.ndarray | None = None,
    *,
    grow: float = 0.0,
    origin: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """Max-union coverage of ``segs`` (radii + ``grow`` mm) on ``grid`` (or into ``out``, a box of
    the grid starting at voxel ``origin``)."""
    if out is None:
        out = np.zeros(grid.shape, dtype=F32)
    if not len(segs):
        return out
    px = grid.px
    ipx = F32(1.0 / px)
    lo, hi = segs.lo_hi(grow + px)
    oz, oy, ox = origin
    shape = out.shape
    for n in range(len(segs)):
        bb = grid.bbox(lo[n], hi[n])
        if bb is None:
            continue
        bb = (
            slice(max(bb[0].start, oz), min(bb[0].stop, oz + shape[0])),
            slice(max(bb[1].start, oy), min(bb[1].stop, oy + shape[1])),
            slice(max(bb[2].start, ox), min(bb[2].stop, ox + shape[2])),
        )
        if any(s.stop <= s.start for s in bb):
            continue
        Z, Y, X = grid.coords(bb)
        sd = segment_sd(Z, Y, X, segs.p0[n], segs.p1[n], segs.r0[n] + grow, segs.r1[n] + grow)
        a = sd
        a *= -ipx
        a += 0.5
        np.clip(a, 0.0, 1.0, out=a)
        ob = (
            slice(bb[0].start - oz, bb[0].stop - oz),
            slice(bb[1].start - oy, bb[1].stop - oy),
            slice(bb[2].start - ox, bb[2].stop - ox),
        )
        np.maximum(out[ob], a, out=out[ob])
    return out


def splat_segments(grid: Grid, segs: Segments, out: np.ndarray | None = None) -> np.ndarray:
    """Partial-volume density of thin tubes: cross-section area along each centre line, spread
    trilinearly over the 8 neighbouring voxels (value = fraction of a voxel filled, not clipped)."""
    if out is None:
        out = np.zeros(grid.shape, dtype=F32)
    if not len(segs):
        return out
    sz, sy, sx = grid.spacing
    step = 0.5 * min(sx, sz)
    length = np.linalg.norm(segs.p1 - segs.p0, axis=1)
    ns = np.maximum(1, np.ceil(length / step).astype(int))
    idx = np.repeat(np.arange(len(segs)), ns)
    start = np.repeat(np.cumsum(ns) - ns, ns)
    t = (np.arange(len(idx)) - start + 0.5) / ns[idx]
    pts = segs.p0[idx] + t[:, None] * (segs.p1[idx] - segs.p0[idx])
    r = segs.r0[idx] + t * (segs.r1[idx] - segs.r0[idx])
    w = np.pi * r * r * (length[idx] / ns[idx]) / (sx * sy * sz)
    f = grid.index_of(pts)
    base = np.floor(f).astype(np.int64)
    fr = f - base
    nz, ny, nx = grid.shape
    flat = out.reshape(-1)
    for dk in (0, 1):
        wk = fr[:, 0] if dk else 1 - fr[:, 0]
        k = base[:, 0] + dk
        for dj in (0, 1):
            wj = fr[:, 1] if dj else 1 - fr[:, 1]
            j = base[:, 1] + dj
            for di in (0, 1):
                wi = fr[:, 2] if di else 1 - fr[:, 2]
                i = base[:, 2] + di
                ok = (k >= 0) & (k < nz) & (j >= 0) & (j < ny) & (i >= 0) & (i < nx)
                lin = (k[ok] * ny + j[ok]) * nx + i[ok]
                np.add.at(flat, lin, (w * wk * wj * wi)[ok].astype(F32))
    return out


@dataclass
class Tree:
    pos: np.ndarray  # (M, 3) node positions
    parent: np.ndarray  # (M,) parent node (-1 for the root)
    radius: np.ndarray  # (M,)
    count: np.ndarray  # (M,) attractor points served
    gen: np.ndarray  # (M,)
    centroid: np.ndarray  # (M, 3) centroid of the points served

    def segments(self, offset: np.ndarray | None = None) -> Segments:
        m = self.parent >= 0
        ids = np.nonzero(m)[0]
        par = self.parent[ids]
        pos = self.pos if offset is None else self.pos + offset
        return Segments(pos[par], pos[ids], self.radius[ids], self.radius[ids], self.gen[ids], ids)

    def subtree(self, root: int) -> np.ndarray:
        """Boolean mask of the nodes in the subtree of ``root`` (root included)."""
        inside = np.zeros(len(self.pos), dtype=bool)
        inside[root] = True
        for n in np.argsort(self.gen, kind="stable"):
            p = self.parent[n]
            if p >= 0 and inside[p]:
                inside[n] = True
        return inside


def grow_tree(
    root: np.ndarray,
    points: np.ndarray,
    root_radius: float,
    rng: np.random.Generator,
    *,
    leaf: int = 2,
    step: float = 0.5,
    first_step: float | None = None,
    quantile: tuple[float, float] = (0.3, 0.7),
    max_gen: int = 24,
) -> Tree:
    """Grow a branching tree from ``root`` that serves all ``points`` (see module docstring)."""
    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    pos = [np.asarray(root, dtype=np.float64)[None]]
    parent = [np.array([-1])]
    radius = [np.array([root_radius], dtype=np.float64)]
    count = [np.array([n])]
    gen = [np.array([0])]
    cen = [pts.mean(axis=0, keepdims=True)]
    owner = np.zeros(n, dtype=np.int64)  # node serving each point (-1 when finished)
    n_nodes = 1
    all_pos = pos[0]
    all_rad = radius[0]
    all_cnt = count[0]
    for g in range(1, max_gen + 1):
        act = owner >= 0
        if not act.any():
            break
        own = owner[act]
        p = pts[act]
        nodes, grp = np.unique(own, return_inverse=True)
        m = len(nodes)
        cnt = np.bincount(grp, minlength=m).astype(np.float64)
        c = np.stack([np.bincount(grp, p[:, d], m) for d in range(3)], axis=1) / cnt[:, None]
        q = p - c[grp]
        cov = np.empty((m, 3, 3))
        for a in range(3):
            for b in range(a, 3):
                v = np.bincount(grp, q[:, a] * q[:, b], m) / cnt
                cov[:, a, b] = v
                cov[:, b, a] = v
        _, vecs = np.linalg.eigh(cov + 1e-6 * np.eye(3))
        axis = vecs[:, :, 2]
        proj = np.einsum("ij,ij->i", q, axis[grp])
        order = np.lexsort((proj, grp))
        starts = np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - starts[grp[order]]
        qs = rng.uniform(quantile[0], quantile[1], m)
        cut = np.clip(np.rint(qs * cnt), 1, np.maximum(cnt - 1, 1))
        side = (rank >= cut[grp]).astype(np.int64)
        child = grp * 2 + side
        ccnt = np.bincount(child, minlength=2 * m).astype(np.float64)
        ok = ccnt > 0
        cc = np.zeros((2 * m, 3))
        for d in range(3):
            cc[ok, d] = np.bincount(child, p[:, d], 2 * m)[ok] / ccnt[ok]
        par_node = np.repeat(nodes, 2)
        par_pos = all_pos[par_node]
        par_cnt = all_cnt[par_node].astype(np.float64)
        par_rad = all_rad[par_node]
        leafy = ccnt <= leaf
        f = np.where(leafy, 1.0, step if (g > 1 or first_step is None) else first_step)
        new_pos = par_pos + f[:, None] * (cc - par_pos)
        new_rad = par_rad * np.cbrt(np.maximum(ccnt, 1) / np.maximum(par_cnt, 1))
        ids = np.full(2 * m, -1, dtype=np.int64)
        ids[ok] = n_nodes + np.arange(int(ok.sum()))
        n_nodes += int(ok.sum())
        pos.append(new_pos[ok])
        parent.append(par_node[ok])
        radius.append(new_rad[ok])
        count.append(ccnt[ok].astype(np.int64))
        gen.append(np.full(int(ok.sum()), g))
        cen.append(cc[ok])
        all_pos = np.concatenate([all_pos, new_pos[ok]])
        all_rad = np.concatenate([all_rad, new_rad[ok]])
        all_cnt = np.concatenate([all_cnt, ccnt[ok].astype(np.int64)])
        new_owner = ids[child]
        new_owner[leafy[child]] = -1
        owner[act] = new_owner
    return Tree(
        pos=np.concatenate(pos),
        parent=np.concatenate(parent),
        radius=np.concatenate(radius),
        count=np.concatenate(count),
        gen=np.concatenate(gen),
        centroid=np.concatenate(cen),
    )
