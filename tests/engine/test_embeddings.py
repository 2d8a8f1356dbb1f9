"""Task-embedding analysis: PCA, clustering, silhouette, delta-W Grams through the factor identity, report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hyperct import embeddings as emb
from hyperct.errors import ExportError, ModelError
from hyperct.findings import catalogue
from hyperct.network.hypernet import LoRAFactors
from tests.support.models import save_tiny_checkpoint, tiny_model

CAT = catalogue()
IDS = CAT.ids


def _grouped_vectors(assign: np.ndarray, dim: int = 64, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """One random unit direction per group + small isotropic noise per task."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, assign.max() + 1)))[0].T  # orthonormal
    return centres[assign] * 3.0 + noise * rng.normal(size=(len(assign), dim))


def _same_partition(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return all(len(set(b[a == v])) == 1 for v in set(a)) and all(len(set(a[b == v])) == 1 for v in set(b))


def _materialised_updates(model, layers=None, kinds=None) -> np.ndarray:
    """(25, P) flattened concatenated dense delta W of the selected modules, float64."""
    with torch.no_grad():
        f = model.lora_factors(None)
    f64 = LoRAFactors(
        f.tasks, {k: v.double() for k, v in f.a.items()}, {k: v.double() for k, v in f.b.items()}, f.scale
    )
    kinds = kinds or list(f.a)
    n_layers = f.a[kinds[0]].shape[1]
    layers = range(n_layers) if layers is None else layers
    rows = []
    for t in range(len(IDS)):
        rows.append(torch.cat([f64.delta_w(k, li, t).reshape(-1) for k in kinds for li in layers]))
    return torch.stack(rows).numpy()


def _cosine(v: np.ndarray) -> np.ndarray:
    n = v / np.linalg.norm(v, axis=1, keepdims=True)
    return n @ n.T


# -- PCA / clustering on constructed structure ---------------------------------------------------
def test_two_group_structure_is_recovered_exactly_with_k2():
    groups = np.array([0 if f.group == "conventional" else 1 for f in CAT])
    a = emb.analyze_vectors(_grouped_vectors(groups))
    cl = a.clustering
    assert cl.k == 2
    assert max(cl.silhouettes, key=cl.silhouettes.get) == 2
    assert _same_partition(cl.labels, groups)
    assert a.group_agreement == pytest.approx(1.0)
    # PC1 separates the two groups and carries most of the variance
    pc1 = a.pca.coords[:, 0]
    assert (np.sign(pc1[groups == 0]) == -np.sign(pc1[groups == 1][0])).all()
    assert a.pca.explained[0] > 0.6 and a.pca.explained[0] > 5 * a.pca.explained[1]
    # the heatmap order keeps each group contiguous
    ordered = groups[cl.order]
    assert (np.diff(ordered) != 0).sum() == 1


def test_three_groups_make_silhouette_choose_k3():
    assign = np.arange(len(IDS)) % 3
    a = emb.analyze_vectors(_grouped_vectors(assign, seed=3))
    assert a.clustering.k == 3 and _same_partition(a.clustering.labels, assign)
    assert a.clustering.silhouettes[3] > a.clustering.silhouettes[2]


def test_clusters_are_numbered_in_leaf_order():
    groups = np.array([0 if f.group == "conventional" else 1 for f in CAT])
    cl = emb.analyze_vectors(_grouped_vectors(groups, seed=5)).clustering
    seen = [int(cl.labels[i]) for i in cl.order]
    firsts = [seen[i] for i in range(len(seen)) if i == 0 or seen[i] != seen[i - 1]]
    assert firsts == list(range(1, cl.k + 1))


def test_silhouette_matches_definition_and_sklearn():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 5))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3])  # includes a singleton cluster
    s = emb.silhouette_samples(d, labels)
    # by hand for sample 0
    a0 = d[0, [1, 2]].mean()
    b0 = min(d[0, labels == c].mean() for c in (1, 2, 3))
    assert s[0] == pytest.approx((b0 - a0) / max(a0, b0))
    assert s[11] == 0.0  # singleton
    metrics = pytest.importorskip("sklearn.metrics")
    np.testing.assert_allclose(s, metrics.silhouette_samples(d, labels, metric="precomputed"), atol=1e-12)
    assert emb.adjusted_rand_index(labels, labels[::-1]) == pytest.approx(
        metrics.adjusted_rand_score(labels, labels[::-1])
    )


def test_silhouette_rejects_a_single_cluster():
    with pytest.raises(ValueError, match="2 to n-1 clusters"):
        emb.silhouette_samples(np.zeros((4, 4)), [1, 1, 1, 1])


def test_kernel_pca_of_the_gram_equals_pca_of_the_vectors():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(25, 40)) + rng.normal(size=(1, 40)) * 5  # a large shared offset
    p = emb.pca_from_vectors(x)
    k = emb.pca_from_gram(x @ x.T)
    np.testing.assert_allclose(k.coords, p.coords, atol=1e-9)
    np.testing.assert_allclose(k.explained, p.explained, atol=1e-12)
    # scores are the projections on orthogonal directions; explained = their variance share
    xc = x - x.mean(0)
    assert abs(p.coords[:, 0] @ p.coords[:, 1]) < 1e-8
    np.testing.assert_allclose(p.explained, (p.coords**2).sum(0) / (xc**2).sum(), rtol=1e-10)


def test_centering_removes_a_shared_component_from_the_cosine():
    groups = np.array([0 if f.group == "conventional" else 1 for f in CAT])
    x = _grouped_vectors(groups, noise=0.3) + 40.0  # everything shares a huge offset
    raw = emb.analyze_vectors(x)
    cen = emb.analyze_vectors(x, centered=True)
    assert raw.cosine.min() > 0.95  # the offset dominates the raw cosine
    assert _same_partition(cen.clustering.labels, groups)
    np.testing.assert_allclose(np.abs(cen.pca.coords), np.abs(raw.pca.coords), atol=1e-9)
    g = emb.analyze_gram(x @ x.T, representation="task_embeddings", centered=True)
    np.testing.assert_allclose(g.cosine, cen.cosine, atol=1e-10)


# -- delta W through the factor identity ---------------------------------------------------------
@pytest.fixture(scope="module")
def lora_model():
    return tiny_model(seed=3, random_lora=True)


@pytest.fixture(scope="module")
def module_grams(lora_model):
    return emb.delta_w_module_grams(lora_model)


def test_delta_w_gram_and_cosine_equal_the_materialised_updates(lora_model, module_grams):
    v = _materialised_updates(lora_model)
    np.testing.assert_allclose(module_grams.gram(), v @ v.T, rtol=1e-10, atol=1e-12)
    a = emb.analyze_delta_w(module_grams)
    np.testing.assert_allclose(a.cosine, _cosine(v), atol=1e-10)
    b = emb.analyze_vectors(v, representation="delta_w")
    np.testing.assert_allclose(a.pca.coords, b.pca.coords, atol=1e-9)
    np.testing.assert_allclose(a.pca.explained, b.pca.explained, atol=1e-12)
    assert _same_partition(a.clustering.labels, b.clustering.labels)


@pytest.mark.parametrize(
    ("layers", "kinds", "expected_kinds"),
    [
        ([1], ["q_proj", "up_proj"], ["q_proj", "up_proj"]),
        (None, "attention", ["q_proj", "k_proj", "v_proj", "o_proj"]),
        (range(0, 1), "down_proj", ["down_proj"]),
    ],
)
def test_delta_w_restriction_equals_materialised_restriction(
    lora_model, module_grams, layers, kinds, expected_kinds
):
    v = _materialised_updates(lora_model, layers=layers, kinds=expected_kinds)
    np.testing.assert_allclose(module_grams.gram(layers=layers, kinds=kinds), v @ v.T, rtol=1e-10, atol=1e-12)
    assert emb.delta_w_gram(lora_model, layers=layers, kinds=kinds) == pytest.approx(v @ v.T, rel=1e-10)
    a = emb.analyze_delta_w(module_grams, layers=layers, kinds=kinds)
    np.testing.assert_allclose(a.cosine, _cosine(v), atol=1e-10)
    assert a.selection["module_types"] == expected_kinds


def test_module_selection_errors_name_the_valid_choices(module_grams):
    with pytest.raises(ValueError, match="unknown module type 'qkv'.*q_proj"):
        module_grams.gram(kinds=["qkv"])
    with pytest.raises(ValueError, match="layers 0..1"):
        module_grams.gram(layers=[2])
    with pytest.raises(ValueError, match="layer selection is empty"):
        module_grams.gram(layers=[])
    assert module_grams.describe(layers=[1], kinds="mlp") == "MLP up/down, layer 2"


def test_untrained_hypernetwork_has_zero_updates_and_a_clear_error():
    model = tiny_model(seed=1, random_lora=False)  # B heads start at exactly zero
    grams = emb.delta_w_module_grams(model)
    assert np.all(grams.grams == 0)
    with pytest.raises(ModelError, match="every task's vector is zero.*untrained hypernetwork"):
        emb.analyze_delta_w(grams)


def test_task_embeddings_are_the_hypernetwork_parameter(lora_model):
    v = emb.task_embedding_vectors(lora_model)
    assert v.shape == (25, lora_model.config.task_dim)
    np.testing.assert_array_equal(v, lora_model.hypernet.task_embeddings.detach().double().numpy())
    a = emb.analyze_task_embeddings(lora_model)
    np.testing.assert_allclose(a.cosine, _cosine(v), atol=1e-12)


def test_scan_features_match_paired_scoring(lora_model):
    g = torch.Generator().manual_seed(4)
    pixels = torch.randn(3, 3, 48, 48, generator=g)  # one "scan" of 3 images
    steps = []
    feats = emb.scan_feature_vectors(lora_model, pixels, task_chunk=7, progress=steps.append)
    assert feats.shape == (25, lora_model.hidden_size)
    with torch.no_grad():
        ref = lora_model.pooled_features(
            pixels[None].expand(25, -1, -1, -1, -1), torch.arange(25), paired=True
        )
    np.testing.assert_allclose(feats, ref.double().numpy(), rtol=1e-4, atol=1e-5)
    assert [s.done for s in steps] == list(range(len(steps))) and steps[-1].done == steps[-1].total == 5


# -- figures, CSV, report ------------------------------------------------------------------------
def test_views_highlight_and_map_clicks_back_to_findings(module_grams):
    from matplotlib.backend_bases import MouseEvent
    from matplotlib.figure import Figure

    a = emb.analyze_delta_w(module_grams)
    fid = "pleural_effusion"
    for view in emb.VIEWS:
        fig = Figure(figsize=(6, 6))
        fig.canvas.draw()  # text extents need a renderer
        plot = emb.draw_view(fig.add_subplot(), view, a, highlight=fid)
        fig.canvas.draw()
        assert plot.highlighted == fid
        plot.set_highlight("no_such_finding")
        assert plot.highlighted is None
        # a click where the finding is drawn maps back to it
        i = a.index(fid)
        if view == "pca":
            x, y = plot.ax.transData.transform(a.pca.coords[i, :2])
        elif view == "heatmap":
            pos = list(a.clustering.order).index(i)
            x, y = plot.ax.transData.transform((3, pos))
        else:
            pos = plot.leaf_order.index(i)
            x, y = plot.ax.transData.transform((0.0, 5 + 10 * pos))
        ev = MouseEvent("button_press_event", fig.canvas, x, y, button=1)
        assert plot.id_from_click(ev) == fid, view


def test_save_figure_rejects_unknown_formats(tmp_path, module_grams):
    fig = emb.make_figure("pca", emb.analyze_delta_w(module_grams))
    with pytest.raises(ExportError, match=r"\.pdf.*use a \.png or \.svg"):
        emb.save_figure(fig, tmp_path / "x.pdf")


def test_csv_exports_round_trip(tmp_path, module_grams):
    a = emb.analyze_delta_w(module_grams, kinds="attention")
    paths = emb.export_csvs(a, tmp_path, prefix="dw")
    assert [p.name for p in paths] == ["dw_gram.csv", "dw_cosine.csv", "dw_pca.csv", "dw_clusters.csv"]
    with open(tmp_path / "dw_cosine.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", *IDS]
    cos = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_array_equal(cos, a.cosine)  # full precision
    with open(tmp_path / "dw_clusters.csv") as f:
        clusters = list(csv.DictReader(f))
    assert [int(r["cluster"]) for r in clusters] == list(a.clustering.labels)
    assert {r["group"] for r in clusters} == {"conventional", "opportunistic"}
    assert sorted(int(r["leaf_position"]) for r in clusters) == list(range(25))


def test_hyperct_info_embeddings_writes_the_report(tmp_path, capsys):
    from hyperct.cli.main import main

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", seed=8, model_name="tiny", model_version="0.1")
    model = tiny_model(seed=8)  # the model saved there (seeded: the same weights)
    out = tmp_path / "report"
    rc = main(["info", "--model", str(ckpt), "--device", "cpu", "--json", "--embeddings", str(out)])
    assert rc == 0
    written = [Path(p) for p in json.loads(capsys.readouterr().out)["embeddings_written"]]
    names = {p.name for p in written}
    for rep in ("task_embeddings", "delta_w"):
        for view in emb.VIEWS:
            assert f"{rep}_{view}.png" in names and f"{rep}_{view}.svg" in names
        for part in ("cosine", "pca", "clusters"):
            assert f"{rep}_{part}.csv" in names
    assert "task_embeddings_vectors.csv" in names and "delta_w_gram.csv" in names
    assert all(p.parent == out and p.is_file() and p.stat().st_size > 0 for p in written)
    assert (out / "delta_w_pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (out / "delta_w_dendrogram.svg").read_text()[:500]
    summary = json.loads((out / "embeddings_summary.json").read_text())
    dw = summary["representations"]["delta_w"]
    expected = emb.analyze_delta_w(emb.delta_w_module_grams(model))
    assert dw["k"] == expected.clustering.k
    assert sum(c["size"] for c in dw["clusters"]) == 25
    assert dw["pca_explained_variance"] == pytest.approx(list(expected.pca.explained))
    assert set(summary["delta_w_breakdown"]["by_module_type"]) == {"attention", "mlp", *model.hypernet.kinds}
    assert set(summary["delta_w_breakdown"]["by_layer"]) == {"1", "2"}
    assert summary["model"]["name"] == "tiny"
    with open(out / "task_embeddings_vectors.csv") as f:
        rows = list(csv.reader(f))
    vec = np.array([[float(v) for v in r[3:]] for r in rows[1:]])
    np.testing.assert_array_equal(vec, emb.task_embedding_vectors(model))


def test_report_on_a_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    from hyperct.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        emb.write_embedding_report(tmp_path / "nope", tmp_path / "out")
