import numpy as np
import pytest
import tensorflow as tf

from kobjectives.ops import embedding_metrics as em


def _average_ranks(values):
    values = np.asarray(values, np.float64)
    ranks = np.empty(len(values))
    for i, v in enumerate(values):
        ranks[i] = (values < v).sum() + ((values == v).sum() + 1) / 2.0
    return ranks


def _spearman(x, y):
    return np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1]


def test_average_ranks_with_ties():
    values = [3.0, 1.0, 3.0, 2.0, 3.0, 1.0]
    np.testing.assert_array_equal(em.average_ranks(values).numpy(), [5.0, 1.5, 5.0, 3.0, 5.0, 1.5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 200).astype("float32")  # many ties
    y = (x + rng.normal(0, 2, 200)).round(1)
    np.testing.assert_allclose(float(em.spearman(x, y)), _spearman(x, y), atol=1e-12)


def test_spearman_known_values():
    assert float(em.spearman([1, 2, 3, 4], [10, 20, 30, 40])) == pytest.approx(1.0)
    assert float(em.spearman([1, 2, 3, 4], [4, 3, 2, 1])) == pytest.approx(-1.0)
    assert float(em.spearman([1, 1, 1], [1, 2, 3])) == 0.0  # constant: 0, not NaN
    with pytest.raises(ValueError, match="same length"):
        em.spearman([1, 2, 3], [1, 2])


def test_alignment_and_uniformity_match_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    y = x + 0.3 * rng.normal(size=(50, 8))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)
    expected_align = np.mean(np.linalg.norm(xn - yn, axis=1) ** 2)
    np.testing.assert_allclose(float(em.alignment(x, y)), expected_align, rtol=1e-5)
    expected_align3 = np.mean(np.linalg.norm(xn - yn, axis=1) ** 3)
    np.testing.assert_allclose(float(em.alignment(x, y, alpha=3)), expected_align3, rtol=1e-5)
    i, j = np.triu_indices(50, k=1)
    d2 = ((xn[i] - xn[j]) ** 2).sum(-1)
    np.testing.assert_allclose(float(em.uniformity(x)), np.log(np.mean(np.exp(-2 * d2))), rtol=1e-5)
    # All equal: perfectly aligned, perfectly non-uniform (0).
    assert float(em.alignment(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(em.uniformity(np.ones((5, 3)))) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="t"):
        em.uniformity(x, t=0)


def test_recall_at_k_matches_reference_and_ties_count_against():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(30, 6))
    c = q + 0.8 * rng.normal(size=(30, 6))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    scores = qn @ cn.T
    rank = (scores > np.diag(scores)[:, None]).sum(1)
    for k in (1, 3, 10):
        np.testing.assert_allclose(float(em.recall_at_k(q, c, k)), np.mean(rank < k), atol=1e-7)
    both = em.recall_at_k(q, c, [1, 3])
    assert set(both) == {1, 3}
    # Constant embeddings: every candidate ties, so nothing is retrieved.
    assert float(em.recall_at_k(np.ones((4, 2)), np.ones((4, 2)), 3)) == 0.0
    assert float(em.recall_at_k(np.ones((4, 2)), np.ones((4, 2)), 4)) == 1.0
    # Explicit relevant indices.
    relevant = np.array([2, 0])
    assert float(em.recall_at_k(c[[2, 0]], c, 1, relevant=relevant)) == 1.0
    with pytest.raises(ValueError, match="k"):
        em.recall_at_k(q, c, 0)


def test_pooling_modes():
    hidden = np.arange(2 * 4 * 3, dtype="float32").reshape(2, 4, 3)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(em.pool_sequence(hidden, mask, "cls"), hidden[:, 0])
    np.testing.assert_allclose(em.pool_sequence(hidden, mask, "mean"),
                               [hidden[0, :3].mean(0), hidden[1, 0]])
    np.testing.assert_array_equal(em.pool_sequence(hidden, mask, "last"), [hidden[0, 2], hidden[1, 0]])
    zero = em.pool_sequence(hidden, np.zeros((2, 4)), "mean")
    np.testing.assert_array_equal(zero, np.zeros((2, 3)))  # never NaN
    with pytest.raises(ValueError, match="pooling"):
        em.pool_sequence(hidden, mask, "max")
    jitted = tf.function(lambda h, m: em.pool_sequence(h, m, "last"), jit_compile=True)
    np.testing.assert_array_equal(jitted(hidden, mask), [hidden[0, 2], hidden[1, 0]])


def test_weighted_mean_pooling():
    hidden = np.arange(2 * 4 * 3, dtype="float32").reshape(2, 4, 3)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    weights = np.array([[1.0, 3.0, 0.5, 9.0], [2.0, 1.0, 1.0, 1.0]], "float32")
    expected = [(hidden[0, 0] + 3 * hidden[0, 1] + 0.5 * hidden[0, 2]) / 4.5, hidden[1, 0]]
    np.testing.assert_allclose(em.pool_sequence(hidden, mask, "mean", weights=weights), expected, rtol=1e-6)
    ones = em.pool_sequence(hidden, mask, "mean", weights=np.ones((2, 4), "float32"))
    np.testing.assert_allclose(ones, em.pool_sequence(hidden, mask, "mean"), rtol=1e-6)
    with pytest.raises(ValueError, match="mode='mean' only"):
        em.pool_sequence(hidden, mask, "cls", weights=weights)


@pytest.mark.parametrize("mode", ["cls", "mean", "last"])
def test_pooling_sequences_of_length_zero_gives_zeros(mode):
    pooled = em.pool_sequence(tf.zeros([2, 0, 4]), tf.zeros([2, 0], tf.bool), mode)
    np.testing.assert_array_equal(pooled.numpy(), np.zeros((2, 4)))
