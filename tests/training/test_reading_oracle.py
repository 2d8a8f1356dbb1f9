"""benchmarks/reading_cnn_oracle.py: the weighted loss on partly missing labels, the positives' weights,
and the per-image labels it reads from the token masks."""

from __future__ import annotations

import numpy as np
import torch

from tests.support.benchmarks import load_benchmark


def test_positive_weights_are_negatives_per_positive_clipped_to_1_10():
    mod = load_benchmark("reading_cnn_oracle")
    labels = np.zeros((10, 4), dtype=np.int8)
    labels[0, 0] = 1  # 1 positive, 9 negatives
    labels[:, 1] = 0  # no positive: at most 10
    labels[:3, 2] = 1  # 3 positives, 7 negatives
    labels[:8, 3] = 1  # more positives than negatives: 1
    labels[9, 0] = -1  # unlabelled: not a negative
    w = mod.positive_weights(labels).numpy()
    np.testing.assert_allclose(w, [8.0, 10.0, 7.0 / 3.0, 1.0], rtol=1e-6)


def test_weighted_bce_weighs_positives_and_ignores_missing_labels():
    mod = load_benchmark("reading_cnn_oracle")
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1, -1], [0, 0]])
    pw = torch.tensor([3.0, 5.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    terms = [3.0 * bce(torch.tensor(2.0), torch.tensor(1.0)), bce(torch.tensor(0.5), torch.tensor(0.0))]
    terms.append(bce(torch.tensor(3.0), torch.tensor(0.0)))
    want = sum(terms) / (3.0 + 1.0 + 1.0)
    assert torch.isclose(mod.weighted_bce(logits, labels, pw), want)
    assert float(mod.weighted_bce(logits, torch.full((2, 2), -1), pw)) == 0.0


def test_an_images_labels_are_any_token_of_the_finding_in_it():
    mod = load_benchmark("reading_cnn_oracle")

    class Tokens:
        def token_labels(self, i, patch):
            t = np.zeros((55, 9, 9, 3), dtype=bool)
            t[4, 2, 3, 1] = True
            t[10:12, :, :, 2] = True
            return t

    got = mod.image_labels(Tokens(), 0)
    assert got.shape == (55, 3) and got.dtype == np.int8
    assert got[:, 0].sum() == 0 and got[4, 1] == 1 and got[:, 1].sum() == 1
    assert got[10, 2] == got[11, 2] == 1 and got[:, 2].sum() == 2


def test_the_patch_stem_embeds_each_vit_patch_linearly_on_its_own():
    """--stem patch: a 9 x 9 token grid of 8 x 8 patches of the 72 x 72 image (the ViT's 16 x 16 of
    144 x 144), each token a linear map of its patch alone, as the ViT's patch embedding."""
    mod = load_benchmark("reading_cnn_oracle")
    embed = mod.ReadingCNN(25, 4, "patch").features[0]
    x = torch.randn(1, 2, 72, 72)
    y = x.clone()
    y[0, :, 10, 20] += 5.0  # a pixel of token (1, 2)
    with torch.no_grad():
        a, b = embed(x), embed(y)
        changed = (a - b).abs().amax(dim=1)[0] > 0
        assert a.shape[-2:] == (9, 9) and changed.nonzero().tolist() == [[1, 2]]
        np.testing.assert_allclose(embed(2 * x) - a, a - embed(0 * x), atol=1e-4)  # linear
