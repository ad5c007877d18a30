"""Preference losses against an independent float64 NumPy transcription of
TRL's formulas (DPOTrainer 1.13, CPOTrainer, ORPO, KTOTrainer,
RewardTrainer), at ordinary and at large magnitudes (log-ratio gaps of
hundreds of nats, where a naive float32 `log(sigmoid(x))` is infinite)."""

import numpy as np
import pytest
import tensorflow as tf

from kobjectives import ops
from kobjectives.ops import preference

# -- the NumPy reference (float64, written from TRL's code) -----------------------


def _logsig(x):
    return -np.logaddexp(0.0, -x)


def _sig(x):
    return np.exp(_logsig(x))


def _np_scores(l, f_type, alpha):
    if f_type == "reverse_kl":
        return l
    if f_type == "forward_kl":
        return 1.0 - np.exp(-l)
    if f_type == "js_divergence":
        return np.log(2.0) + _logsig(l)
    if abs(alpha - 1.0) < 1e-6:
        return l
    t = np.minimum((alpha - 1.0) * l, 80.0)
    return (np.exp(t) - 1.0) / (alpha - 1.0)


def np_dpo(loss_type, pc, pr, rc, rr, beta, ls=0.0, nc=None, nr=None,
           f_type="reverse_kl", alpha=0.5, tau=0.05):
    pc, pr, rc, rr = (np.asarray(v, np.float64) for v in (pc, pr, rc, rr))
    lc, lr = pc - rc, pr - rr
    sc, sr = _np_scores(lc, f_type, alpha), _np_scores(lr, f_type, alpha)
    d = sc - sr
    if loss_type == "sigmoid":
        return -_logsig(beta * d)
    if loss_type == "hinge":
        return np.maximum(0.0, 1.0 - beta * d)
    if loss_type in ("ipo", "sigmoid_norm"):
        ca = sc / np.maximum(np.asarray(nc, np.float64), 1.0)
        ra = sr / np.maximum(np.asarray(nr, np.float64), 1.0)
        if loss_type == "ipo":
            return (ca - ra - 1.0 / (2.0 * beta)) ** 2
        return -_logsig(beta * (ca - ra))
    if loss_type == "exo_pair":
        qw, log_qw = _sig(beta * d), _logsig(beta * d)
        ql, log_ql = _sig(-beta * d), _logsig(-beta * d)
        return qw * (log_qw - np.log1p(-ls)) + ql * (log_ql - np.log(ls))
    if loss_type == "nca_pair":
        cr, rj = beta * lc, beta * lr
        return -_logsig(cr) - 0.5 * _logsig(-cr) - 0.5 * _logsig(-rj)
    if loss_type == "robust":
        clean = -(1 - ls) * _logsig(beta * d)
        flipped = -ls * _logsig(-beta * d)
        return (clean - flipped) / (1 - 2 * ls)
    if loss_type == "bco_pair":
        return -_logsig(beta * lc) - _logsig(-beta * lr)
    if loss_type == "sppo_hard":
        return (lc - 0.5 / beta) ** 2 + (lr + 0.5 / beta) ** 2
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":
            delta = np.sort(pc - pr) - np.sort(rc - rr)
        else:
            delta = np.sort(lc) - np.sort(lr)
        return -_logsig(beta * delta) * (1 - ls) - _logsig(-beta * delta) * ls
    if loss_type == "apo_zero":
        return (1 - _sig(beta * lc)) + _sig(beta * lr)
    if loss_type == "apo_down":
        return _sig(beta * lc) + (1 - _sig(beta * (lc - lr)))
    if loss_type == "discopop":
        logits = beta * d
        mod = _sig(logits / tau)
        return -_logsig(logits) * (1 - mod) + np.exp(-logits) * mod
    if loss_type == "sft":
        value = -pc.sum() / max(float(np.sum(nc)), 1.0)
        return np.full(pc.shape, value)
    raise AssertionError(loss_type)


# Ordinary magnitudes, and gaps of hundreds of nats (beta 1): a naive float32
# formula overflows there.
SMALL = dict(
    pc=[-10.0, -20.5, -3.25, -40.0], pr=[-12.0, -18.0, -7.5, -41.0],
    rc=[-11.0, -21.0, -4.0, -38.0], rr=[-11.5, -17.0, -6.0, -43.0], beta=0.1)
LARGE = dict(
    pc=[-10.0, -50.0, -300.0, -5.0], pr=[-12.0, -40.0, -100.0, -305.0],
    rc=[-11.0, -45.0, -100.0, -200.0], rr=[-11.0, -45.0, -100.0, -105.0], beta=1.0)
LENGTHS = dict(nc=[5.0, 10.0, 2.0, 20.0], nr=[6.0, 8.0, 3.0, 0.0])  # 0 is clamped to 1
SMOOTHING = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.1, "aot_unpaired": 0.2}


def _call(loss_type, case, **kwargs):
    ls = SMOOTHING.get(loss_type, 0.0) if isinstance(loss_type, str) else kwargs.pop("ls", 0.0)
    return ops.dpo_loss(
        case["pc"], case["pr"], case["rc"], case["rr"], beta=case["beta"],
        loss_type=loss_type, label_smoothing=ls,
        chosen_lengths=LENGTHS["nc"], rejected_lengths=LENGTHS["nr"], **kwargs)


def _reference(loss_type, case, **kwargs):
    return np_dpo(loss_type, case["pc"], case["pr"], case["rc"], case["rr"], case["beta"],
                  ls=SMOOTHING.get(loss_type, 0.0), nc=LENGTHS["nc"], nr=LENGTHS["nr"], **kwargs)


def test_large_inputs_overflow_a_naive_float32_formula():
    gap = np.float32(LARGE["beta"]) * np.float32(-200.0)
    with np.errstate(over="ignore", divide="ignore"):
        naive = -np.log(np.float32(1.0) / (np.float32(1.0) + np.exp(-gap)))
    assert not np.isfinite(naive)


def test_dpo_types_match_numpy():
    for loss_type in preference.DPO_LOSS_TYPES:
        for case in (SMALL, LARGE):
            losses, chosen, rejected = _call(loss_type, case)
            for t in (losses, chosen, rejected):
                assert t.shape == (4,) and t.dtype == tf.float32
            np.testing.assert_allclose(losses.numpy(), _reference(loss_type, case),
                                       rtol=2e-6, atol=2e-6, err_msg=loss_type)
            beta = case["beta"]
            np.testing.assert_allclose(chosen, beta * np.subtract(case["pc"], case["rc"]), rtol=1e-6)
            np.testing.assert_allclose(rejected, beta * np.subtract(case["pr"], case["rr"]), rtol=1e-6)


def test_dpo_gradients_finite_at_large_magnitudes_and_match_finite_differences():
    for loss_type in preference.DPO_LOSS_TYPES:
        _check_gradients(loss_type)


def _check_gradients(loss_type):
    for case in (LARGE, SMALL):
        pc, pr = tf.Variable(case["pc"]), tf.Variable(case["pr"])
        with tf.GradientTape() as tape:
            losses, chosen, rejected = ops.dpo_loss(
                pc, pr, case["rc"], case["rr"], beta=case["beta"], loss_type=loss_type,
                label_smoothing=SMOOTHING.get(loss_type, 0.0),
                chosen_lengths=LENGTHS["nc"], rejected_lengths=LENGTHS["nr"])
            total = tf.reduce_sum(losses) + tf.reduce_sum(chosen + rejected)  # rewards: no grad
        grads = [g.numpy() for g in tape.gradient(
            total, [pc, pr], unconnected_gradients=tf.UnconnectedGradients.ZERO)]
        assert all(np.all(np.isfinite(g)) for g in grads), (loss_type, grads)
    # At ordinary magnitudes: the gradient of the float64 reference, by central differences.
    h = 1e-5
    for arg, grad in zip(("pc", "pr"), grads):
        expected = np.zeros(4)
        for i in range(4):
            up, down = dict(SMALL), dict(SMALL)
            up[arg] = list(np.add(SMALL[arg], np.eye(4)[i] * h))
            down[arg] = list(np.add(SMALL[arg], -np.eye(4)[i] * h))
            expected[i] = (_reference(loss_type, up).sum() - _reference(loss_type, down).sum()) / (2 * h)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5, err_msg=loss_type)


def test_sigmoid_gradient_at_a_saturated_pair_is_exact():
    pc = tf.Variable([-300.0])
    with tf.GradientTape() as tape:
        losses, _, _ = ops.dpo_loss(pc, [-100.0], [-100.0], [-100.0], beta=1.0)
    np.testing.assert_allclose(losses.numpy(), [200.0], rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(losses, pc).numpy(), [-1.0], rtol=1e-6)


def test_weighted_sum_of_types_is_the_weighted_sum_of_each():
    types, weights = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]
    combined, chosen, _ = _call(types, SMALL, loss_weights=weights)
    expected = sum(w * _reference(t, SMALL) for t, w in zip(types, weights))
    np.testing.assert_allclose(combined.numpy(), expected, rtol=2e-6)
    # default weights: 1 each; smoothing used by one type of the list
    combined, _, _ = _call(("robust", "sigmoid"), SMALL, ls=0.1)
    expected = (np_dpo("robust", **_np_args(SMALL), ls=0.1) + _reference("sigmoid", SMALL))
    np.testing.assert_allclose(combined.numpy(), expected, rtol=2e-6)
    # TRL's batch loss: sum_k w_k mean(loss_k) == mean(combined)
    assert float(tf.reduce_mean(combined)) == pytest.approx(float(expected.mean()), rel=1e-6)


def _np_args(case):
    return dict(pc=case["pc"], pr=case["pr"], rc=case["rc"], rr=case["rr"], beta=case["beta"],
                nc=LENGTHS["nc"], nr=LENGTHS["nr"])


def test_sft_term_from_a_given_nll():
    nll = [1.0, 2.0, 3.0, 4.0]
    losses, _, _ = _call("sft", SMALL, policy_chosen_nll=nll)
    np.testing.assert_array_equal(losses.numpy(), nll)


def test_bco_delta_shifts_the_rewards():
    losses, _, _ = _call("bco_pair", SMALL, bco_delta=0.3)
    lc = np.subtract(SMALL["pc"], SMALL["rc"]) * SMALL["beta"]
    lr = np.subtract(SMALL["pr"], SMALL["rr"]) * SMALL["beta"]
    np.testing.assert_allclose(losses.numpy(), -_logsig(lc - 0.3) - _logsig(-(lr - 0.3)), rtol=2e-6)


def test_f_divergences_match_numpy():
    for f_type, alpha in [("forward_kl", 0.5), ("js_divergence", 0.5), ("alpha_divergence", 0.5),
                          ("alpha_divergence", 1.0), ("alpha_divergence", 2.5)]:
        for loss_type in preference.F_DIVERGENCE_LOSS_TYPES:
            losses, chosen, _ = _call(loss_type, SMALL, f_divergence_type=f_type,
                                      f_alpha_divergence_coef=alpha)
            expected = _reference(loss_type, SMALL, f_type=f_type, alpha=alpha)
            np.testing.assert_allclose(losses.numpy(), expected, rtol=3e-6, atol=1e-6,
                                       err_msg=f"{loss_type} {f_type} {alpha}")
            # rewards stay beta * log-ratio under every divergence (TRL)
            np.testing.assert_allclose(
                chosen, SMALL["beta"] * np.subtract(SMALL["pc"], SMALL["rc"]), rtol=1e-6)


def test_f_divergences_stay_finite_at_large_log_ratios():
    for f_type, alpha in [("forward_kl", 0.5), ("alpha_divergence", 0.2),
                          ("alpha_divergence", 3.0), ("js_divergence", 0.5)]:
        _check_large_f_divergence(f_type, alpha)


def _check_large_f_divergence(f_type, alpha):
    pc = tf.Variable(LARGE["pc"])
    with tf.GradientTape() as tape:
        losses, _, _ = ops.dpo_loss(pc, LARGE["pr"], LARGE["rc"], LARGE["rr"], beta=0.1,
                                    f_divergence_type=f_type, f_alpha_divergence_coef=alpha)
    assert np.all(np.isfinite(losses.numpy()))
    assert np.all(np.isfinite(tape.gradient(losses, pc).numpy()))
    if f_type == "alpha_divergence":  # TRL clamps the exponent at 80 too
        np.testing.assert_allclose(
            losses.numpy(), np_dpo("sigmoid", **{k: LARGE[k] for k in ("pc", "pr", "rc", "rr")},
                                   beta=0.1, f_type=f_type, alpha=alpha), rtol=1e-5)


def test_dpo_error_cases():
    args = (SMALL["pc"], SMALL["pr"], SMALL["rc"], SMALL["rr"])
    with pytest.raises(ValueError, match="Unknown `loss_type` 'kto_pair'.*'sigmoid'.*'sigmoid_norm'"):
        ops.dpo_loss(*args, loss_type="kto_pair")
    with pytest.raises(ValueError, match="Unknown `loss_type`"):
        ops.dpo_loss(*args, loss_type=["sigmoid", "nope"])
    with pytest.raises(ValueError, match="non-empty"):
        ops.dpo_loss(*args, loss_type=[])
    for bad in (-0.1, 0.6, "0.1", True):
        with pytest.raises(ValueError, match=r"label_smoothing.*\[0, 0.5\]"):
            ops.dpo_loss(*args, loss_type="robust", label_smoothing=bad)
    for unused in ("sigmoid", "hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "apo_zero",
                   "apo_down", "discopop", "sft", "sigmoid_norm"):
        with pytest.raises(ValueError, match="not used by"):
            ops.dpo_loss(*args, loss_type=unused, label_smoothing=0.1,
                         chosen_lengths=LENGTHS["nc"], rejected_lengths=LENGTHS["nr"])
    with pytest.raises(ValueError, match="exo_pair.*> 0"):
        ops.dpo_loss(*args, loss_type="exo_pair")
    with pytest.raises(ValueError, match="robust.*< 0.5"):
        ops.dpo_loss(*args, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="Unknown `f_divergence_type`"):
        ops.dpo_loss(*args, f_divergence_type="kl")
    with pytest.raises(ValueError, match="only supported by loss types"):
        ops.dpo_loss(*args, loss_type="nca_pair", f_divergence_type="js_divergence")
    with pytest.raises(ValueError, match="`reference_rejected_logps` must have the shape"):
        ops.dpo_loss(*args[:3], [-1.0, -2.0])
    with pytest.raises(ValueError, match="rank 1"):
        ops.dpo_loss([[-1.0]], [[-1.0]], [[-1.0]], [[-1.0]])
    with pytest.raises(ValueError, match="`chosen_lengths` is required by loss type 'ipo'"):
        ops.dpo_loss(*args, loss_type="ipo")
    with pytest.raises(ValueError, match="`chosen_lengths` must have the shape|must have rank"):
        ops.dpo_loss(*args, loss_type="sigmoid_norm", chosen_lengths=[1.0], rejected_lengths=[1.0])
    with pytest.raises(ValueError, match="loss_weights"):
        ops.dpo_loss(*args, loss_type=["sigmoid", "hinge"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="`beta` must be a positive"):
        ops.dpo_loss(*args, beta=0.0)
    with pytest.raises(ValueError, match="`discopop_tau`"):
        ops.dpo_loss(*args, loss_type="discopop", discopop_tau=-1.0)


def test_dpo_jit_compile_matches_eager():
    def run(pc, pr, rc, rr):
        outputs = []
        for loss_type in [["sigmoid", "bco_pair", "sft"], "aot", "aot_unpaired", "ipo",
                          "discopop", "exo_pair"]:
            outputs.append(ops.dpo_loss(
                pc, pr, rc, rr, beta=1.0, loss_type=loss_type,
                label_smoothing=0.01 if loss_type in ("aot", "exo_pair") else 0.0,
                chosen_lengths=LENGTHS["nc"], rejected_lengths=LENGTHS["nr"])[0])
        outputs.append(ops.dpo_loss(pc, pr, rc, rr, f_divergence_type="alpha_divergence")[0])
        return tf.stack(outputs)

    inputs = [tf.constant(LARGE[k]) for k in ("pc", "pr", "rc", "rr")]
    eager = run(*inputs)
    compiled = tf.function(run, jit_compile=True)(*inputs)
    assert np.all(np.isfinite(eager.numpy()))
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), rtol=1e-5, atol=1e-6)


# -- sequence log-probabilities ---------------------------------------------------


def _lm_data(seed=0, batch=4, length=7, hidden=8, vocab=11):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(batch, length, hidden)).astype("float32")
    k = (rng.normal(size=(hidden, vocab)) * 0.5).astype("float32")
    y = rng.integers(0, vocab, (batch, length)).astype("int32")
    w = np.zeros((batch, length), "float32")
    for b, (start, end) in enumerate([(2, 7), (3, 5), (1, 4), (6, 7)]):  # prompt, completion, padding
        w[b, start:end] = 1.0
    y[w == 0] = np.array([-100, 999, -1, 11])[np.arange(int((w == 0).sum())) % 4]  # garbage
    return h, k, y, w


def _np_sequence_log_probs(h, k, y, w):
    logits = h.astype(np.float64) @ k.astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    token = np.take_along_axis(log_probs, np.where(w > 0, y, 0)[..., None], -1)[..., 0]
    return (token * w).sum(-1), (w > 0).sum(-1).astype(np.float64)


def test_sequence_log_probs_chunked_and_plain_match_hand_computation():
    h, k, y, w = _lm_data()
    expected_sums, expected_counts = _np_sequence_log_probs(h, k, y, w)
    for chunk_size in (None, 1, 4, 64):
        sums, counts = ops.sequence_log_probs(h, k, y, w, chunk_size=chunk_size)
        assert sums.shape == (4,) and sums.dtype == tf.float32 and counts.dtype == tf.float32
        np.testing.assert_allclose(sums.numpy(), expected_sums, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(counts.numpy(), expected_counts)
    sums_l, counts_l = ops.sequence_log_probs_from_logits(h @ k, y, w)
    np.testing.assert_allclose(sums_l.numpy(), expected_sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(counts_l.numpy(), expected_counts)
    np.testing.assert_allclose(ops.average_log_probs(sums, counts).numpy(),
                               expected_sums / expected_counts, rtol=1e-5)


def test_masked_slots_never_poison_values_or_gradients():
    h, k, y, w = _lm_data(seed=1)
    poisoned = h.copy()
    poisoned[w == 0] = np.nan
    poisoned[0, 0, 0] = np.inf
    coefficients = tf.constant([1.0, -2.0, 0.5, 3.0])

    def value_and_grads(hidden, fn):
        hidden, kernel = tf.Variable(hidden), tf.Variable(k)
        with tf.GradientTape() as tape:
            sums, _ = fn(hidden, kernel)
            total = tf.reduce_sum(sums * coefficients)
        return sums.numpy(), [g.numpy() for g in tape.gradient(total, [hidden, kernel])]

    runs = {
        "plain": lambda hh, kk: ops.sequence_log_probs(hh, kk, y, w),
        "chunked": lambda hh, kk: ops.sequence_log_probs(hh, kk, y, w, chunk_size=3),
        "logits": lambda hh, kk: ops.sequence_log_probs_from_logits(
            tf.einsum("bld,dv->blv", hh, kk), y, w),
    }
    clean_values, clean_grads = value_and_grads(np.where(w[..., None] > 0, h, 0.0), runs["plain"])
    for name, fn in runs.items():
        values, grads = value_and_grads(poisoned, fn)
        np.testing.assert_allclose(values, clean_values, rtol=1e-5, atol=1e-5, err_msg=name)
        if name == "logits":  # NaN logits reach the einsum's own gradient: check the values only
            continue
        for g, clean in zip(grads, clean_grads):
            assert np.all(np.isfinite(g)), name
            np.testing.assert_allclose(g, clean, rtol=1e-4, atol=1e-5, err_msg=name)
        assert np.all(grads[0][w == 0] == 0.0), name


def test_chunked_and_plain_gradients_agree():
    h, k, y, w = _lm_data(seed=2)
    grads = []
    for chunk_size in (None, 5):
        hidden, kernel = tf.Variable(h), tf.Variable(k)
        with tf.GradientTape() as tape:
            sums, _ = ops.sequence_log_probs(hidden, kernel, y, w, chunk_size=chunk_size)
            losses, _, _ = ops.dpo_loss(*ops.split_pairs(sums), [-3.0, -4.0], [-5.0, -2.0])
            loss = tf.reduce_mean(losses)
        grads.append([g.numpy() for g in tape.gradient(loss, [hidden, kernel])])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_hidden_gives_float32_sums():
    h, k, y, w = _lm_data(seed=3)
    h16 = tf.cast(h, tf.bfloat16)
    expected, _ = _np_sequence_log_probs(
        h16.numpy().astype(np.float32), tf.cast(tf.cast(k, tf.bfloat16), tf.float32).numpy(), y, w)
    for chunk_size in (None, 4):
        sums, counts = ops.sequence_log_probs(h16, k, y, w, chunk_size=chunk_size)
        assert sums.dtype == tf.float32 and counts.dtype == tf.float32
        np.testing.assert_allclose(sums.numpy(), expected, rtol=0.02, atol=0.05)
    sums, _ = ops.sequence_log_probs_from_logits(tf.cast(h16 @ tf.cast(k, tf.bfloat16), tf.bfloat16), y, w)
    assert sums.dtype == tf.float32


def test_sequence_log_probs_errors_and_xla():
    h, k, y, w = _lm_data(seed=4)
    bad = y.copy()
    bad[0, 3] = 11  # positive weight, outside the vocabulary
    for chunk_size in (None, 4):
        with pytest.raises(ValueError, match=r"integer ids in \[0, 11\)"):
            ops.sequence_log_probs(h, k, bad, w, chunk_size=chunk_size)
    with pytest.raises(ValueError, match="int token ids"):
        ops.sequence_log_probs(h, k, y.astype("float32"), w)
    with pytest.raises(ValueError, match="leading shape"):
        ops.sequence_log_probs(h, k, y[:, :3], w[:, :3])
    with pytest.raises(ValueError, match="does not broadcast"):
        ops.sequence_log_probs(h, k, y, w[:, :3])
    with pytest.raises(ValueError, match="non-negative"):
        ops.sequence_log_probs(h, k, y, -w)
    # Under XLA: garbage at weight 0 is ignored, an invalid label of positive weight is NaN.
    fn = tf.function(lambda hh, yy: ops.sequence_log_probs(hh, k, yy, w)[0], jit_compile=True)
    expected, _ = _np_sequence_log_probs(h, k, y, w)
    np.testing.assert_allclose(fn(h, y).numpy(), expected, rtol=1e-5, atol=1e-5)
    poisoned = fn(h, bad).numpy()
    assert np.isnan(poisoned[0]) and np.all(np.isfinite(poisoned[1:]))


# -- WPO weights -------------------------------------------------------------------


def _np_wpo_log_weights(logits, y, w):
    """TRL 1.x's `mean_logps` in float64: mean over the completion (w > 0) of
    `log p(y_t) - (logsumexp(2 z) - 2 logsumexp(z))`."""
    z = np.asarray(logits, np.float64)

    def lse(a):
        top = a.max(-1, keepdims=True)
        return (top + np.log(np.exp(a - top).sum(-1, keepdims=True)))[..., 0]

    lse1, lse2 = lse(z), lse(2.0 * z)
    token = np.take_along_axis(z, np.where(w > 0, y, 0)[..., None], -1)[..., 0] - lse1
    aligned = np.where(w > 0, token - (lse2 - 2.0 * lse1), 0.0)
    return aligned.sum(-1) / np.maximum((w > 0).sum(-1), 1)


def test_wpo_log_weights_on_hand_computed_logits_unclamped():
    # Row 0: uniform over 4 -> p = sum p^2 = 1/4, log-weight 0. Row 1: the label is the
    # peak of softmax([3, 0, 0, 0]) (p = e^3 / (e^3 + 3)): p > sum p^2, a weight above 1
    # (TRL 0.x clamped it to 1; TRL 1.x does not). Row 2: no completion token: 0.
    logits = np.zeros((3, 2, 4), "float32")
    logits[1, :, 0] = 3.0
    y = np.array([[2, 1], [0, 0], [7, -100]])
    w = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]], "float32")
    p = np.e ** 3 / (np.e ** 3 + 3)
    q = 1 / (np.e ** 3 + 3)
    by_hand = np.log(p) - np.log(p * p + 3 * q * q)
    assert by_hand > 0.13  # 0.1318
    _, counts, log_weights = ops.sequence_log_probs_from_logits(
        logits, y, w, return_wpo_log_weights=True)
    np.testing.assert_allclose(log_weights.numpy(), [0.0, by_hand, 0.0], atol=1e-6)
    np.testing.assert_allclose(log_weights.numpy(), _np_wpo_log_weights(logits, y, w), atol=1e-6)
    np.testing.assert_array_equal(counts.numpy(), [2.0, 1.0, 0.0])
    weights = ops.wpo_weights(log_weights[:1], log_weights[1:2])
    np.testing.assert_allclose(weights.numpy(), [np.exp(by_hand)], rtol=1e-6)
    assert float(weights[0]) > 1.14  # not clamped at 1


def test_wpo_log_weights_chunked_equal_unchunked_and_numpy():
    h, k, y, w = _lm_data(seed=5)
    logits = h.astype(np.float64) @ k.astype(np.float64)
    expected = _np_wpo_log_weights(logits, y, w)
    expected_sums, expected_counts = _np_sequence_log_probs(h, k, y, w)
    for chunk_size in (None, 1, 4, 64):
        sums, counts, log_weights = ops.sequence_log_probs(
            h, k, y, w, chunk_size=chunk_size, return_wpo_log_weights=True)
        assert log_weights.shape == (4,) and log_weights.dtype == tf.float32
        np.testing.assert_allclose(log_weights.numpy(), expected, atol=1e-5, err_msg=chunk_size)
        np.testing.assert_allclose(sums.numpy(), expected_sums, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(counts.numpy(), expected_counts)
    _, _, from_logits = ops.sequence_log_probs_from_logits(h @ k, y, w,
                                                           return_wpo_log_weights=True)
    np.testing.assert_allclose(from_logits.numpy(), expected, atol=1e-5)
    # NaN states at weight-0 slots (garbage labels there too) change nothing.
    poisoned = np.where(w[..., None] > 0, h, np.nan).astype("float32")
    for chunk_size in (None, 3):
        _, _, log_weights = ops.sequence_log_probs(poisoned, k, y, w, chunk_size=chunk_size,
                                                   return_wpo_log_weights=True)
        np.testing.assert_allclose(log_weights.numpy(), expected, atol=1e-5)
    # Under XLA, chunked and not.
    for chunk_size in (None, 3):
        fn = tf.function(lambda hh, c=chunk_size: ops.sequence_log_probs(
            hh, k, y, w, chunk_size=c, return_wpo_log_weights=True)[2], jit_compile=True)
        np.testing.assert_allclose(fn(h).numpy(), expected, atol=1e-5)


def test_wpo_weights_carry_no_gradient_and_leave_the_sums_gradient_alone():
    h, k, y, w = _lm_data(seed=6)
    for chunk_size in (None, 4):
        hidden, kernel = tf.Variable(h), tf.Variable(k)
        with tf.GradientTape(persistent=True) as tape:
            sums, _, log_weights = ops.sequence_log_probs(
                hidden, kernel, y, w, chunk_size=chunk_size, return_wpo_log_weights=True)
            pair_weights = ops.wpo_weights(*ops.split_pairs(log_weights))
            weighted = tf.reduce_sum(sums * tf.concat([pair_weights, pair_weights], 0))
            plain_sums, _ = ops.sequence_log_probs(hidden, kernel, y, w, chunk_size=chunk_size)
            constant = tf.reduce_sum(plain_sums * tf.constant(
                np.tile(pair_weights.numpy(), 2)))
        assert tape.gradient(log_weights, [hidden, kernel]) == [None, None]
        assert tape.gradient(pair_weights, [hidden, kernel]) == [None, None]
        # The weighted sum's gradient is that of the sums times constant weights.
        for a, b in zip(tape.gradient(weighted, [hidden, kernel]),
                        tape.gradient(constant, [hidden, kernel])):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
        del tape


def test_wpo_weights_at_extremes_and_errors():
    # exp(100) alone overflows float32 and exp(-150) underflows: their product would be
    # inf * 0 = NaN; the log-weights are summed first.
    weights = ops.wpo_weights([100.0, 3.0, 0.0], [-150.0, -200.0, 0.0])
    assert weights.dtype == tf.float32
    np.testing.assert_allclose(weights.numpy(), [np.exp(-50.0), 0.0, 1.0], rtol=1e-5)
    # The largest possible weight, V^2 (each log-weight <= log V), is finite for V = 256k.
    log_v = np.log(256_000.0)
    assert np.isfinite(float(ops.wpo_weights([log_v], [log_v])[0]))
    with pytest.raises(ValueError, match="`rejected_log_weights` must have the shape"):
        ops.wpo_weights([0.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="rank 1"):
        ops.wpo_weights([[0.0]], [[0.0]])


def test_split_pairs():
    chosen, rejected = ops.split_pairs(tf.reshape(tf.range(12), [6, 2]))
    np.testing.assert_array_equal(chosen.numpy(), [[0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(rejected.numpy(), [[6, 7], [8, 9], [10, 11]])
    with pytest.raises(ValueError, match="even first dimension"):
        ops.split_pairs(tf.zeros([3]))
    dynamic = tf.function(lambda v: ops.split_pairs(v)[1],
                          input_signature=[tf.TensorSpec([None], tf.float32)])
    np.testing.assert_array_equal(dynamic(tf.constant([1.0, 2.0, 3.0, 4.0])).numpy(), [3.0, 4.0])


# -- SimPO, CPO, ORPO ---------------------------------------------------------------

AVG_C = np.array([-0.8, -1.5, -200.0, -0.01])
AVG_R = np.array([-1.2, -1.0, -0.5, -150.0])


def test_simpo_matches_trl():
    beta, gamma = 2.0, 0.5
    for ls in (0.0, 0.2):
        losses, chosen, rejected = ops.simpo_loss(AVG_C, AVG_R, beta=beta, gamma=gamma,
                                                  label_smoothing=ls)
        logits = (AVG_C - AVG_R) - gamma / beta  # TRL: gamma_logratios = simpo_gamma / beta
        expected = -_logsig(beta * logits) * (1 - ls) - _logsig(-beta * logits) * ls
        np.testing.assert_allclose(losses.numpy(), expected, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(chosen.numpy(), beta * AVG_C, rtol=1e-6)
        np.testing.assert_allclose(rejected.numpy(), beta * AVG_R, rtol=1e-6)
    cv = tf.Variable(AVG_C.astype("float32"))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(ops.simpo_loss(cv, AVG_R)[0])
    assert np.all(np.isfinite(tape.gradient(total, cv).numpy()))


def test_cpo_matches_trl():
    for loss_type, ls in [("sigmoid", 0.0), ("sigmoid", 0.1), ("hinge", 0.0), ("ipo", 0.0),
                          ("simpo", 0.1)]:
        _check_cpo(loss_type, ls)


def _check_cpo(loss_type, ls):
    beta = 0.1
    c, r = AVG_C * 20, AVG_R * 20  # summed log-probs for sigmoid/hinge
    losses, chosen, rejected = ops.cpo_loss(c, r, beta=beta, loss_type=loss_type, label_smoothing=ls)
    z = c - r
    if loss_type == "simpo":
        z = z - 0.5 / beta
    expected = {
        "sigmoid": -_logsig(beta * z) * (1 - ls) - _logsig(-beta * z) * ls,
        "simpo": -_logsig(beta * z) * (1 - ls) - _logsig(-beta * z) * ls,
        "hinge": np.maximum(0.0, 1 - beta * z),
        "ipo": (z - 1 / (2 * beta)) ** 2,
    }[loss_type]
    np.testing.assert_allclose(losses.numpy(), expected, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(chosen.numpy(), beta * c, rtol=1e-6)
    assert losses.shape == (4,)


def _alphapo_reward(logps, alpha):
    """TRL's `(1 - p.pow(-alpha)) / alpha` with `p = exp(logps)`, in float64."""
    return (1 - np.exp(np.asarray(logps, np.float64)) ** -alpha) / alpha


@pytest.mark.parametrize("alpha", [0.25, -0.5])
def test_alphapo_matches_trl(alpha):
    c, r = np.array([-0.8, -1.5, -3.0, -0.01]), np.array([-1.2, -1.0, -0.5, -4.0])
    beta, gamma = 2.0, 0.5
    losses, chosen, rejected = ops.simpo_loss(c, r, beta=beta, gamma=gamma, alpha=alpha)
    rc, rr = _alphapo_reward(c, alpha), _alphapo_reward(r, alpha)
    logits = (rc - rr) - gamma / beta
    np.testing.assert_allclose(losses.numpy(), -_logsig(beta * logits), rtol=1e-5)
    np.testing.assert_allclose(chosen.numpy(), beta * rc, rtol=1e-5)
    np.testing.assert_allclose(rejected.numpy(), beta * rr, rtol=1e-5)
    # CPO's types take the same rewards (TRL's `alpha` works with every type).
    losses, _, _ = ops.cpo_loss(c, r, beta=0.1, loss_type="ipo", alpha=alpha)
    np.testing.assert_allclose(losses.numpy(), (rc - rr - 1 / (2 * 0.1)) ** 2, rtol=1e-5)
    losses, chosen, _ = ops.cpo_loss(c, r, beta=0.1, loss_type="sigmoid", alpha=alpha)
    np.testing.assert_allclose(losses.numpy(), -_logsig(0.1 * (rc - rr)), rtol=1e-5)
    np.testing.assert_allclose(chosen.numpy(), 0.1 * rc, rtol=1e-5)
    # alpha 0 is SimPO itself.
    np.testing.assert_array_equal(ops.simpo_loss(c, r, alpha=0.0)[0].numpy(),
                                  ops.simpo_loss(c, r)[0].numpy())


def test_alphapo_saturates_instead_of_overflowing():
    # A summed log-probability of -800 with alpha 0.25: p^-alpha = e^200 overflows
    # float32 (TRL's loss is inf or NaN). The exponent is clamped at 80: finite
    # loss, and no gradient through the saturated completion.
    c = tf.Variable([-800.0, -1.0])
    r = tf.Variable([-900.0, -2.0])
    with tf.GradientTape() as tape:
        losses, chosen, rejected = ops.cpo_loss(c, r, beta=0.1, alpha=0.25)
        total = tf.reduce_sum(losses)
    grad_c, grad_r = tape.gradient(total, [c, r])
    assert np.all(np.isfinite(losses.numpy())) and np.all(np.isfinite(chosen.numpy()))
    saturated = -np.expm1(80.0) / 0.25
    np.testing.assert_allclose(chosen.numpy()[0], 0.1 * saturated, rtol=1e-6)
    np.testing.assert_allclose(losses.numpy()[0], np.log(2.0), rtol=1e-6)  # both saturated
    assert grad_c.numpy()[0] == 0.0 and grad_r.numpy()[0] == 0.0
    assert grad_c.numpy()[1] < 0.0 < grad_r.numpy()[1]  # the other pair still learns


def test_cpo_and_simpo_errors():
    with pytest.raises(ValueError, match="Unknown `loss_type` 'robust'.*'simpo'"):
        ops.cpo_loss(AVG_C, AVG_R, loss_type="robust")
    for loss_type in ("hinge", "ipo"):
        with pytest.raises(ValueError, match="does not use `label_smoothing`"):
            ops.cpo_loss(AVG_C, AVG_R, loss_type=loss_type, label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.simpo_loss(AVG_C, AVG_R, label_smoothing=0.7)
    with pytest.raises(ValueError, match="`rejected_logps` must have the shape"):
        ops.simpo_loss(AVG_C, AVG_R[:2])
    with pytest.raises(ValueError, match="gamma"):
        ops.simpo_loss(AVG_C, AVG_R, gamma=float("nan"))
    for alpha in (float("inf"), "0.5", True):
        with pytest.raises(ValueError, match=r"`alpha` \(AlphaPO's reward shape\) must be a "
                                             r"finite number"):
            ops.cpo_loss(AVG_C, AVG_R, alpha=alpha)


def test_odds_ratio_matches_trl_and_is_accurate_near_zero():
    beta = 0.1
    c = np.array([-0.8, -1.5, -200.0, -1e-6, -0.3])
    r = np.array([-1.2, -1.0, -0.5, -150.0, -1e-7])
    losses, log_odds = ops.odds_ratio_loss(c, r, beta=beta)
    # TRL: log_odds = (c - r) - (log1p(-exp(c)) - log1p(-exp(r))); losses = beta * logsigmoid(log_odds)
    expected_log_odds = (c - r) - (np.log(-np.expm1(c)) - np.log(-np.expm1(r)))
    np.testing.assert_allclose(log_odds.numpy(), expected_log_odds, rtol=1e-5)
    np.testing.assert_allclose(losses.numpy(), -(beta * _logsig(expected_log_odds)), rtol=1e-5,
                               atol=1e-7)
    assert np.all(losses.numpy() >= 0)
    cv, rv = tf.Variable(c.astype("float32")), tf.Variable(r.astype("float32"))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(ops.odds_ratio_loss(cv, rv, beta=beta)[0])
    assert all(np.all(np.isfinite(g.numpy())) for g in tape.gradient(total, [cv, rv]))
    with pytest.raises(ValueError, match="< 0"):
        ops.odds_ratio_loss([0.0], [-1.0])
    with pytest.raises(ValueError, match="< 0"):
        ops.odds_ratio_loss([-1.0], [0.5])


def test_odds_ratio_of_a_traced_zero_stays_finite():
    # An average log-probability that rounded to 0 (every token's probability
    # rounded to 1), known only at run time: a finite loss and gradient, not NaN.
    @tf.function
    def loss_and_gradients(c, r):
        with tf.GradientTape() as tape:
            tape.watch([c, r])
            losses, log_odds = ops.odds_ratio_loss(c, r, beta=0.1)
            total = tf.reduce_sum(losses)
        return losses, log_odds, tape.gradient(total, [c, r])

    losses, log_odds, gradients = loss_and_gradients(
        tf.constant([0.0, 0.0, -0.5, -1e-30]), tf.constant([-0.5, 0.0, -0.5, -0.5]))
    for value in (losses, log_odds, *gradients):
        assert np.all(np.isfinite(value.numpy()))
    assert log_odds[0] > 80 and losses[0] == 0.0  # the chosen completion is certain
    np.testing.assert_allclose(losses[1:3], 0.1 * np.log(2.0), rtol=1e-6)  # even odds
    np.testing.assert_array_equal(gradients[0][:2], [0.0, 0.0])  # no gradient at the clamp
    # Just below 0 the op is exact, as TRL's float64 (odds(r) = 1 / (e^0.5 - 1)).
    np.testing.assert_allclose(gradients[0][3], -0.1 / np.expm1(0.5), rtol=1e-5)


# -- KTO ------------------------------------------------------------------------------


def test_kto_matches_trl():
    for loss_type in ("kto", "apo_zero_unpaired"):
        _check_kto(loss_type)


def _check_kto(loss_type):
    policy = np.array([-10.0, -20.0, -300.0, -5.0, -40.0])
    reference = np.array([-11.0, -18.0, -100.0, -205.0, -40.5])
    desirable = np.array([True, False, True, False, False])
    kl_p, kl_r = np.array([-30.0, -12.0, -50.0]), np.array([-31.0, -12.5, -50.25])
    beta, dw, uw = 0.5, 1.5, 0.75
    kl = ops.kto_kl_baseline(kl_p, kl_r)
    expected_kl = max(np.mean(kl_p - kl_r), 0.0)
    assert float(kl) == pytest.approx(expected_kl)
    losses, rewards = ops.kto_loss(policy, reference, desirable, kl, beta=beta, desirable_weight=dw,
                                   undesirable_weight=uw, loss_type=loss_type)
    l = policy - reference
    if loss_type == "kto":
        chosen = 1 - _sig(beta * (l - expected_kl))
        rejected = 1 - _sig(beta * (expected_kl - l))
    else:
        chosen, rejected = 1 - _sig(beta * l), _sig(beta * l)
    # TRL concatenates the chosen losses, then the rejected ones; the mean is the loss
    trl = np.concatenate([dw * chosen[desirable], uw * rejected[~desirable]])
    np.testing.assert_allclose(losses.numpy(), np.where(desirable, dw * chosen, uw * rejected),
                               rtol=2e-6, atol=1e-7)
    assert float(tf.reduce_mean(losses)) == pytest.approx(trl.mean(), rel=1e-6)
    np.testing.assert_allclose(rewards.numpy(), beta * l, rtol=1e-6)
    pv = tf.Variable(policy.astype("float32"))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(ops.kto_loss(pv, reference, desirable, kl, loss_type=loss_type)[0])
    assert np.all(np.isfinite(tape.gradient(total, pv).numpy()))


def test_kto_kl_baseline_clamps_has_no_gradient_and_averages_replicas(mirrored_strategy):
    assert float(ops.kto_kl_baseline([-5.0, -6.0], [-4.0, -5.0])) == 0.0  # mean -1 -> 0
    p = tf.Variable([-3.0, -5.0])
    with tf.GradientTape() as tape:
        kl = ops.kto_kl_baseline(p, [-4.0, -5.0])
        losses, _ = ops.kto_loss([-1.0], [-2.0], [True], kl)
    assert tape.gradient(kl, p) is None
    # None: no KL batch (TRL's calculate_KL=False) -> reference point 0
    np.testing.assert_allclose(ops.kto_loss([-1.0], [-2.0], [1], None, beta=1.0)[0].numpy(),
                               [1 - _sig(1.0)], rtol=1e-6)
    with pytest.raises(ValueError, match="`kl` must be a scalar"):
        ops.kto_loss([-1.0], [-2.0], [True], [0.1, 0.2])
    with pytest.raises(ValueError, match="Unknown `loss_type`"):
        ops.kto_loss([-1.0], [-2.0], [True], 0.0, loss_type="bco")
    # Two replicas: the mean of the replicas' means (TRL: gather(kl).mean()), then the clamp.
    per_replica = {0: ([-1.0, -3.0], [-2.0, -3.0]), 1: ([-7.0], [-8.0])}
    kl_means = [np.mean(np.subtract(*per_replica[i])) for i in (0, 1)]

    def values(index):
        def fn(context):
            return tf.constant(per_replica[context.replica_id_in_sync_group][index])
        return mirrored_strategy.experimental_distribute_values_from_function(fn)

    result = mirrored_strategy.run(ops.kto_kl_baseline, args=(values(0), values(1)))
    for value in mirrored_strategy.experimental_local_results(result):
        assert float(value) == pytest.approx(np.mean(kl_means))


# -- reward model ------------------------------------------------------------------------


def test_bradley_terry_and_centering_match_trl():
    chosen = np.array([2.0, -1.0, 250.0, -300.0])
    rejected = np.array([1.0, 0.5, -250.0, 300.0])
    margin = np.array([0.5, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(ops.bradley_terry_loss(chosen, rejected).numpy(),
                               -_logsig(chosen - rejected), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ops.bradley_terry_loss(chosen, rejected, margin).numpy(),
                               -_logsig(chosen - rejected - margin), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ops.reward_centering(chosen, rejected).numpy(),
                               (chosen + rejected) ** 2, rtol=1e-6)
    cv = tf.Variable(chosen.astype("float32"))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(ops.bradley_terry_loss(cv, rejected))
    np.testing.assert_allclose(tape.gradient(total, cv).numpy(), -_sig(rejected - chosen),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="`rejected_rewards` must have the shape"):
        ops.bradley_terry_loss(chosen, rejected[:2])
    with pytest.raises(ValueError, match="`margin`.*does not broadcast"):
        ops.bradley_terry_loss(chosen, rejected, margin[:3])


# -- LD-DPO token weights ------------------------------------------------------------


def _np_trl_ld_logps(per_token_logps, completion_mask, ld_alpha):
    """TRL 1.x's `DPOTrainer` logps of a `[chosen; rejected]` batch, transcribed
    line by line in float64 (`ld_alpha` None: the plain sums)."""
    per_token_logps = np.array(per_token_logps, np.float64)
    mask = np.asarray(completion_mask)
    per_token_logps[mask == 0] = 0.0
    if ld_alpha is None:
        return per_token_logps.sum(1)
    comp_pos = mask.cumsum(1)
    comp_lens = mask.sum(1)
    chosen_lens, rejected_lens = np.split(comp_lens, 2)
    shared_lens = np.minimum(chosen_lens, rejected_lens)
    shared_lens = np.concatenate([shared_lens, shared_lens])
    shared_mask = (comp_pos > 0) & (comp_pos <= shared_lens[:, None])
    tail_mask = comp_pos > shared_lens[:, None]
    return (per_token_logps * shared_mask).sum(1) + ld_alpha * (per_token_logps * tail_mask).sum(1)


# Three pairs: chosen longer (4 vs 2), equal (3 and 3), rejected longer (1 vs 3), over
# prompts of different lengths and right padding.
LD_MASK = np.array([
    [0, 1, 1, 1, 1, 0],
    [0, 0, 1, 1, 1, 0],
    [0, 0, 0, 1, 0, 0],
    [0, 0, 1, 1, 0, 0],
    [0, 1, 1, 1, 0, 0],
    [0, 1, 1, 1, 0, 0],
], "int32")


def test_ld_token_weights_by_hand_and_against_trl():
    a = 0.25
    np.testing.assert_array_equal(ops.ld_token_weights(LD_MASK, a).numpy(), [
        [0, 1, 1, a, a, 0],   # the longer chosen's 3rd and 4th tokens: the tail
        [0, 0, 1, 1, 1, 0],   # equal lengths: no tail
        [0, 0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 1, a, a, 0, 0],   # the longer rejected's tail
    ])
    rng = np.random.default_rng(0)
    token = rng.normal(-2.0, 1.0, LD_MASK.shape)
    token[LD_MASK == 0] = np.nan  # garbage off the completion: TRL zeroes it first
    plain = _np_trl_ld_logps(token, LD_MASK, None)
    for ld_alpha in (0.0, 0.5, 1.0):
        weights = ops.ld_token_weights(LD_MASK, ld_alpha)
        assert weights.dtype == tf.float32 and weights.shape == LD_MASK.shape
        ours = np.where(LD_MASK > 0, np.nan_to_num(token) * weights.numpy(), 0.0).sum(1)
        expected = _np_trl_ld_logps(token, LD_MASK, ld_alpha)
        np.testing.assert_allclose(ours, expected, rtol=1e-6)
        np.testing.assert_allclose(expected[[1, 4]], plain[[1, 4]])  # equal lengths: plain
    np.testing.assert_allclose(_np_trl_ld_logps(token, LD_MASK, 1.0), plain)
    np.testing.assert_array_equal(ops.ld_token_weights(LD_MASK, 1.0).numpy(), LD_MASK)
    # A gap in the mask: positions count completion tokens only (TRL's cumsum); float
    # and bool masks alike; the given weights scale the result.
    gap = np.array([[1, 0, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_array_equal(ops.ld_token_weights(gap.astype(bool), 0.5).numpy(),
                                  [[1, 0, 1, 0.5], [1, 1, 0, 0]])
    np.testing.assert_array_equal(ops.ld_token_weights(2.0 * gap, 0.5).numpy(),
                                  [[2, 0, 2, 1], [2, 2, 0, 0]])
    # Under XLA, with a pair count only known at run time too.
    fn = tf.function(lambda m: ops.ld_token_weights(m, 0.25), jit_compile=True)
    np.testing.assert_array_equal(fn(tf.constant(LD_MASK, tf.float32)).numpy(),
                                  ops.ld_token_weights(LD_MASK, 0.25).numpy())
    dynamic = tf.function(lambda m: ops.ld_token_weights(m, 0.25),
                          input_signature=[tf.TensorSpec([None, 6], tf.int32)])
    np.testing.assert_array_equal(dynamic(LD_MASK).numpy(),
                                  ops.ld_token_weights(LD_MASK, 0.25).numpy())


def test_sequence_log_probs_extra_ld_sums_keep_the_full_counts():
    # _lm_data's 4 rows are 2 pairs: rows 0/2 (5 vs 3 completion tokens), 1/3 (2 vs 1).
    h, k, y, w = _lm_data(seed=7)
    logits = h.astype(np.float64) @ k.astype(np.float64)
    token = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token = np.take_along_axis(token, np.where(w > 0, y, 0)[..., None], -1)[..., 0]
    expected_sums, expected_counts = _np_sequence_log_probs(h, k, y, w)
    wpo = _np_wpo_log_weights(logits, y, w)
    for ld_alpha in (0.0, 0.5, 1.0):
        ld = ops.ld_token_weights(w, ld_alpha)
        expected = _np_trl_ld_logps(token, w, ld_alpha)
        for chunk_size in (None, 3):
            sums, counts, log_weights, ld_sums = ops.sequence_log_probs(
                h, k, y, w, chunk_size=chunk_size, return_wpo_log_weights=True,
                extra_weights=ld)
            np.testing.assert_allclose(ld_sums.numpy(), expected, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(sums.numpy(), expected_sums, rtol=1e-5, atol=1e-5)
            # The counts and the WPO mean stay the full completion's (ld_alpha 0 too).
            np.testing.assert_array_equal(counts.numpy(), expected_counts)
            np.testing.assert_allclose(log_weights.numpy(), wpo, atol=1e-5)
        _, counts, ld_sums = ops.sequence_log_probs_from_logits(h @ k, y, w, extra_weights=ld)
        np.testing.assert_allclose(ld_sums.numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(counts.numpy(), expected_counts)
    # ld_alpha 1 is the plain sums; 0 is not (the tails are dropped).
    np.testing.assert_allclose(_np_trl_ld_logps(token, w, 1.0), expected_sums, rtol=1e-12)
    assert not np.allclose(_np_trl_ld_logps(token, w, 0.0), expected_sums)
    # LD weights passed as `weights` give the same sums but count only positive weights.
    sums, counts = ops.sequence_log_probs(h, k, y, ops.ld_token_weights(w, 0.0))
    np.testing.assert_allclose(sums.numpy(), _np_trl_ld_logps(token, w, 0.0), rtol=1e-5)
    np.testing.assert_array_equal(counts.numpy(), [3.0, 1.0, 3.0, 1.0])
    # Under XLA, chunked; the gradient reaches a dropped tail's states not at all.
    hidden = tf.Variable(h)
    fn = tf.function(lambda: ops.sequence_log_probs(
        hidden, k, y, w, chunk_size=3, extra_weights=ops.ld_token_weights(w, 0.0))[2],
        jit_compile=True)
    np.testing.assert_allclose(fn().numpy(), _np_trl_ld_logps(token, w, 0.0), rtol=1e-5)
    with tf.GradientTape() as tape:
        ld_sums = ops.sequence_log_probs(hidden, k, y, w, chunk_size=3,
                                         extra_weights=ops.ld_token_weights(w, 0.0))[2]
    grad = tf.norm(tape.gradient(ld_sums, hidden), axis=-1).numpy()
    np.testing.assert_array_equal(grad[0, 5:], [0.0, 0.0])  # row 0's 4th and 5th tokens
    assert np.all(grad[0, 2:5] > 0) and np.all(grad[w == 0] == 0)


def test_ld_token_weights_and_extra_weights_errors():
    for bad in (-0.1, 1.5, float("nan"), "0.5", True, None, [0.5]):
        with pytest.raises(ValueError, match=r"`ld_alpha` must be a number in \[0, 1\]"):
            ops.ld_token_weights(LD_MASK, bad)
    with pytest.raises(ValueError, match="even first dimension"):
        ops.ld_token_weights(LD_MASK[:5], 0.5)
    with pytest.raises(ValueError, match=r"`completion_weights` must be `\[2 \* pairs"):
        ops.ld_token_weights(LD_MASK[0], 0.5)
    with pytest.raises(ValueError, match="`completion_weights` must be a numeric"):
        ops.ld_token_weights(tf.constant([["a"], ["b"]]), 0.5)
    h, k, y, w = _lm_data()
    with pytest.raises(ValueError, match="`extra_weights`.*non-negative"):
        ops.sequence_log_probs(h, k, y, w, extra_weights=-w)
    with pytest.raises(ValueError, match="`extra_weights` of shape"):
        ops.sequence_log_probs(h, k, y, w, extra_weights=w[:, :3])


def test_robust_keeps_float32_accuracy_at_a_flip_rate_near_one_half():
    """TRL's form divides two softplus terms' rounding by `1 - 2 eps` (50 at
    eps 0.49); the equal `-log_sig(x) - eps x / (1 - 2 eps)` does not. Near
    a zero margin the loss is about log 2: within a few float32 ulps of it."""
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (np.float32(rng.uniform(-3, 0, 256)) for _ in range(4))
    losses, _, _ = ops.dpo_loss(pc, pr, rc, rr, beta=0.001, loss_type="robust",
                                label_smoothing=0.49)
    expected = np_dpo("robust", pc, pr, rc, rr, 0.001, ls=0.49)
    np.testing.assert_allclose(losses.numpy(), expected, rtol=0, atol=4 * 2**-24)
