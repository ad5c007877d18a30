"""kobjectives' preference losses against TRL's own code, on random hidden cases.

Compares `kobjectives.ops.preference` (TensorFlow) with TRL's loss code run in
PyTorch float64 and float32: every `DPOTrainer` loss type (alone, in weighted
sums, with label smoothing, lengths, every f-divergence), SimPO, CPO (+AlphaPO),
ORPO, KTO (KL baseline, weights), the reward model's Bradley-Terry loss
(margin, centering): per-row losses, rewards, and gradients of the mean loss
w.r.t. the policy log-probs (GradientTape vs. autograd), on 200 rows x betas
{.01,.1,1,10} x log-probs near 0, in -50..0, in -1e4..0, ~-1e4 with O(1) gaps.

TRL's code is loaded at run time, never copied: `CPOTrainer.cpo_loss`,
`ORPOTrainer.odds_ratio_loss` and `RewardTrainer.compute_loss` are called as
the real methods with a `types.SimpleNamespace` as `self`. The DPO and KTO
losses are inline in `_compute_loss`: their blocks (DPO: `chosen_logratios =
...` through the `for loss_type` loop, and the two reward lines; KTO:
`bool_labels = ...` through `losses = torch.cat(...)`) are cut from
`inspect.getsource` by `ast` statement ranges and exec'd unmodified, with the
model outputs bound as tensors.

Set-up (torch and trl only in this side venv; kobjectives does not use torch):

    python -m venv --system-site-packages /tmp/trlvenv
    /tmp/trlvenv/bin/pip install torch trl==1.16.0   # any torch; a CPU wheel will do

Run from the repository root (about 1.5 minutes on 2 cores; exits 1 on any FAIL):

    /tmp/trlvenv/bin/python scripts/trl_parity.py [--trl-source DIR/trl] [--only LABEL]

`--trl-source` loads that `trl` package directory instead of the installed one
(TRL >= 1.15: 1.13/1.14's `sft` term reads the logits, which this does not build).

Tolerance: |ours - T64| <= C (eps32 S + s) + C tiny32, C = 8: T64 is TRL's
float64 result, S = max(1, |T64|) (gradients: max(|T64|, beta/batch)), s the
float32 error of TRL's own algorithm on these inputs, by Monte Carlo
arithmetic (largest deviation of T64 over 4 runs with every input and aten op
result, forward and backward, times 1 + u eps32, u ~ U(-1, 1)); C covers
worst-case vs. sampled rounding and few-ulp elementary functions (TF's float32
softplus is up to 2.3 ulps off near 0). Counted, not failed: kfin32 (TRL
float32 inf/NaN, ours finite: still checked against T64), ovf32 (T64 finite,
TRL float32 and ours both overflow), clamp (rows where kobjectives' documented
exponent clamp at 80 acts: forward-KL, AlphaPO), unrel (AlphaPO rows with
exp(logp) subnormal in float64: TRL's p^-alpha loses precision), unver (T64
inf/NaN, ours finite). f64!= counts values that change when kobjectives gets
float64 inputs (its ops compute in float32). TRL's float32-only spots (ORPO's
`.float()`, the alpha-divergence clamp table keyed by 16/32-bit dtypes) run in
float64 with `Tensor.float` a no-op on float64 and, for the DPO block, a
`torch` whose `float32` is `float64`.
"""

import argparse
import ast
import collections
import contextlib
import inspect
import os
import sys
import textwrap
import types
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPS32, TINY32 = float(np.finfo(np.float32).eps), float(np.finfo(np.float32).tiny)
C, DRAWS = 8.0, 4  # the tolerance's multiple of the float32 error estimate; Monte Carlo runs per batch
BETAS = (0.01, 0.1, 1.0, 10.0)
REGIMES = ("near0", "typical", "large", "cancel")
LS = {"exo_pair": (1e-3, 0.1, 0.5), "robust": (0.0, 0.1, 0.49), "aot": (0.0, 0.1, 0.5), "aot_unpaired": (0.0, 0.1, 0.5)}
DPO_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
             "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft")
FDIV_TYPES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")


def load_trl(source):
    if source:
        sys.path.insert(0, str(Path(source).resolve().parent))
    import torch
    import trl
    from trl.experimental.cpo import cpo_trainer
    from trl.experimental.orpo import orpo_trainer
    from trl.trainer import dpo_trainer, kto_trainer, reward_trainer
    if source and Path(trl.__file__).resolve().parent != Path(source).resolve():
        raise SystemExit(f"--trl-source {source} was not imported (got {trl.__file__})")
    torch.set_num_threads(1)
    dpo_fn, kto_fn = dpo_trainer.DPOTrainer._compute_loss, kto_trainer.KTOTrainer._compute_loss
    print(f"TRL {trl.__version__} from {Path(trl.__file__).parent}, torch {torch.__version__}")
    return types.SimpleNamespace(
        torch=torch, dpo_globals=vars(dpo_trainer), kto_globals=vars(kto_trainer),
        dpo=code_block(dpo_fn, "chosen_logratios = chosen_logps - ref_chosen_logps", "for loss_type"),
        dpo_rewards=code_block(dpo_fn, "chosen_rewards = self.beta", "rejected_rewards = self.beta"),
        kto=code_block(kto_fn, "bool_labels = torch.as_tensor(", "losses = torch.cat("),
        cpo_loss=cpo_trainer.CPOTrainer.cpo_loss, orpo_loss=orpo_trainer.ORPOTrainer.odds_ratio_loss,
        reward_loss=reward_trainer.RewardTrainer.compute_loss)


def code_block(func, first, last):
    """The top-level statements of `func` from the one starting `first` to the one starting `last`."""
    lines, start = inspect.getsourcelines(func)
    src = textwrap.dedent("".join(lines))
    body, src_lines = ast.parse(src).body[0].body, src.splitlines()
    text = [src_lines[s.lineno - 1].strip() for s in body]
    i = next(k for k, t in enumerate(text) if t.startswith(first))
    j = next(k for k in range(i, len(body)) if text[k].startswith(last))
    print(f"  exec'd unmodified: {func.__qualname__}, {inspect.getsourcefile(func)} "
          f"lines {start + body[i].lineno - 1}-{start + body[j].end_lineno - 1}")
    code = textwrap.dedent("\n".join(src_lines[body[i].lineno - 1:body[j].end_lineno]))
    return compile(code, f"<{func.__qualname__}>", "exec")


@contextlib.contextmanager
def float64_run(torch, dt):
    """Yields the `torch` to run TRL with: for float64, TRL's float32-only spots evaluated in float64."""
    if dt != torch.float64:
        yield torch
        return
    original = torch.Tensor.float
    torch.Tensor.float = lambda t, *a, **k: t if t.dtype == torch.float64 else original(t, *a, **k)
    proxy = types.ModuleType("torch")
    proxy.__getattr__ = lambda name: getattr(torch, name)  # everything else is torch's (PEP 562)
    proxy.float32 = torch.float64
    try:
        yield proxy
    finally:
        torch.Tensor.float = original


# -- inputs (float32-representable, shared by all runs) and the two sides ------------------
# Each side returns a dict of outputs; `grad` is the gradient of the mean loss w.r.t. the policy's log-probs.


def draw(rng, regime, b, k=4):
    """`k` arrays `[b]` of log-probabilities < 0."""
    if regime == "near0":
        x = -(10.0 ** rng.uniform(-8, -1, (k, b)))
    elif regime in ("typical", "large"):
        x = rng.uniform(-50 if regime == "typical" else -1e4, 0, (k, b))
    else:  # log-probs near -1e4 with O(1) differences: the cancelling regime
        x = rng.uniform(-1e4, -10, b) + rng.uniform(-3, 3, (k, b))
    return list(np.minimum(x, -1e-9).astype(np.float32).astype(np.float64))


def make_inputs(kind, rng, regime, b):
    x, n = draw(rng, regime, b), rng.integers(1, 513, (2, b)).astype(np.float64)
    if kind == "dpo":
        return dict(pc=x[0], pr=x[1], rc=x[2], rr=x[3], nc=n[0], nr=n[1])
    if kind in ("avg", "sum"):  # length-averaged log-probs (TRL's CPO: ipo, simpo; ORPO) or sums (sigmoid, hinge)
        n = n if kind == "avg" else np.ones_like(n)
        return dict(c=(x[0] / n[0]).astype(np.float32).astype(np.float64),
                    r=(x[1] / n[1]).astype(np.float32).astype(np.float64))
    if kind == "kto":
        labels = rng.random(b) < 0.5
        labels[:2] = True, False
        return dict(p=x[0], r=x[1], pk=x[2], rk=x[3], labels=labels)
    return dict(zip("crm", (v * rng.choice([-1.0, 1.0], b) for v in x[:3])))  # rewards, margins of any sign


def trl_dpo(T, x, p, dt):
    torch = T.torch
    t = {k: torch.tensor(v, dtype=dt) for k, v in x.items()}
    pc, pr = t["pc"].requires_grad_(), t["pr"].requires_grad_()
    b, length = len(x["pc"]), int(max(x["nc"].max(), x["nr"].max()))
    pos = torch.arange(length + 1, dtype=dt)[None]
    completion_mask = ((pos >= 1) & (pos <= torch.cat([t["nc"], t["nr"]])[:, None])).long()  # 1 prompt token
    # each sequence's summed log-prob sits on its first completion token, zeros on the others
    per_token_logps = torch.cat([torch.cat([pc, pr])[:, None], torch.zeros(2 * b, length - 1, dtype=dt)], 1)
    chosen_logps, rejected_logps = per_token_logps.sum(dim=1).chunk(2, dim=0)
    cfg = types.SimpleNamespace(
        beta=p["beta"], loss_types=p["types"], loss_weights=p.get("weights", [1.0] * len(p["types"])),
        f_divergence_type=p.get("f", "reverse_kl"), f_alpha_divergence_coef=p.get("f_alpha", 0.5),
        label_smoothing=p.get("ls", 0.0), use_weighting=False,
        args=types.SimpleNamespace(discopop_tau=p.get("tau", 0.05)))
    ns = dict(T.dpo_globals, self=cfg, device=torch.device("cpu"), chosen_logps=chosen_logps,
              rejected_logps=rejected_logps, ref_chosen_logps=t["rc"], ref_rejected_logps=t["rr"],
              completion_mask=completion_mask, shift_completion_mask=completion_mask[..., 1:],
              per_token_logps=per_token_logps)
    with float64_run(torch, dt) as ns["torch"]:
        exec(T.dpo, ns)
        exec(T.dpo_rewards, ns)
    ns["loss"].backward()
    loss = ns["per_sequence_loss"] if len(p["types"]) == 1 else ns["loss"].reshape(1)  # a sum: only its mean
    return dict(loss=loss, chosen_rewards=ns["chosen_rewards"], rejected_rewards=ns["rejected_rewards"],
                grad=torch.cat([pc.grad, pr.grad]))


def ours_dpo(P, tf, tape, x, p, dt):  # the ours_* run under `tape`: (outputs, per-row losses, watched)
    t = {k: tf.constant(v, dt) for k, v in x.items()}
    tape.watch([t["pc"], t["pr"]])
    single = len(p["types"]) == 1
    losses, cr, rr = P.dpo_loss(
        t["pc"], t["pr"], t["rc"], t["rr"], beta=p["beta"], loss_type=p["types"][0] if single else p["types"],
        label_smoothing=p.get("ls", 0.0), chosen_lengths=t["nc"], rejected_lengths=t["nr"],
        loss_weights=p.get("weights"), f_divergence_type=p.get("f", "reverse_kl"),
        f_alpha_divergence_coef=p.get("f_alpha", 0.5), discopop_tau=p.get("tau", 0.05))
    loss = losses if single else tf.reshape(tf.reduce_mean(losses), [1])
    return dict(loss=loss, chosen_rewards=cr, rejected_rewards=rr), losses, [t["pc"], t["pr"]]


def excluded(x, p):
    """`(clamped, trl64_unreliable)`: per-output masks of the values not comparable with TRL float64."""
    def masks(c, r, rewards=True):
        return dict(loss=c | r, grad=np.concatenate([c | r, c | r]), **(
            dict(chosen_rewards=c, rejected_rewards=r) if rewards else {}))
    if p.get("f") == "forward_kl" and p["types"] != ["sft"]:  # kobjectives clamps -l at 80, TRL does not
        return masks(x["rc"] - x["pc"] > 80, x["rr"] - x["pr"] > 80, rewards=False), {}
    a, sub = p.get("alpha", 0.0), np.log(np.finfo(np.float64).tiny)
    if a == 0.0:
        return {}, {}
    # kobjectives clamps -alpha logp at 80; below logp = -708.4 TRL's p = exp(logp) is subnormal in float64
    return (masks(-a * x["c"] > 80, -a * x["r"] > 80),
            masks((a > 0) & (x["c"] < sub) & (-a * x["c"] <= 80), (a > 0) & (x["r"] < sub) & (-a * x["r"] <= 80)))


def trl_pair(T, x, p, dt):  # CPO (incl. SimPO, AlphaPO) and ORPO
    c, r = (T.torch.tensor(x[k], dtype=dt, requires_grad=True) for k in "cr")
    cfg = types.SimpleNamespace(alpha=p.get("alpha", 0.0), beta=p["beta"], loss_type=p["type"],
                                simpo_gamma=p.get("gamma", 0.5), label_smoothing=p.get("ls", 0.0),
                                accelerator=types.SimpleNamespace(device="cpu"))
    if p["type"] == "orpo":
        with float64_run(T.torch, dt):
            losses, _, _, _, mean_log_odds = T.orpo_loss(cfg, c, r)
        losses = -losses  # TRL returns beta * log_sig(log_odds); kobjectives (documented) its negative
        out = dict(mean_log_odds=mean_log_odds.reshape(1))
    else:
        losses, cr, rr = T.cpo_loss(cfg, c, r)
        out = dict(chosen_rewards=cr, rejected_rewards=rr)
    losses.mean().backward()
    return dict(out, loss=losses, grad=T.torch.cat([c.grad, r.grad]))


def ours_pair(P, tf, tape, x, p, dt):
    c, r = (tf.constant(x[k], dt) for k in "cr")
    tape.watch([c, r])
    kw = dict(beta=p["beta"], label_smoothing=p.get("ls", 0.0), alpha=p.get("alpha", 0.0))
    if p["type"] == "orpo":
        losses, log_odds = P.odds_ratio_loss(c, r, beta=p["beta"])
        return dict(loss=losses, mean_log_odds=tf.reshape(tf.reduce_mean(log_odds), [1])), losses, [c, r]
    if p.get("via_simpo"):
        losses, cr, rr = P.simpo_loss(c, r, gamma=p.get("gamma", 0.5), **kw)
    else:
        losses, cr, rr = P.cpo_loss(c, r, loss_type=p["type"], simpo_gamma=p.get("gamma", 0.5), **kw)
    return dict(loss=losses, chosen_rewards=cr, rejected_rewards=rr), losses, [c, r]


def trl_kto(T, x, p, dt):
    torch = T.torch
    completion_logps = torch.tensor(x["p"], dtype=dt, requires_grad=True)
    apo = p["type"] == "apo_zero_unpaired"
    cfg = types.SimpleNamespace(
        beta=p["beta"], loss_type=p["type"], desirable_weight=p["dw"], undesirable_weight=p["uw"],
        calculate_KL=not apo, precompute_ref_logps=True,
        accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=lambda v: v))
    batch = dict(label=torch.tensor(x["labels"]), ref_logps=torch.tensor(x["r"], dtype=dt),
                 ref_KL_logps=None if apo else torch.tensor(x["rk"], dtype=dt))
    ns = dict(T.kto_globals, self=cfg, batch=batch, completion_logps=completion_logps, device=torch.device("cpu"),
              KL_logps=torch.tensor(x["pk"], dtype=dt))
    exec(T.kto, ns)
    ns["losses"].nanmean().backward()  # TRL's `loss = losses.nanmean()`
    return dict(loss=ns["losses"], rewards=torch.cat([ns["chosen_rewards"], ns["rejected_rewards"]]),
                grad=completion_logps.grad)


def ours_kto(P, tf, tape, x, p, dt):
    t = {k: tf.constant(x[k], dt) for k in ("p", "r", "pk", "rk")}
    tape.watch(t["p"])
    perm = np.concatenate([np.flatnonzero(x["labels"]), np.flatnonzero(~x["labels"])])  # TRL's row order
    kl = None if p["type"] == "apo_zero_unpaired" else P.kto_kl_baseline(t["pk"], t["rk"])
    losses, rewards = P.kto_loss(t["p"], t["r"], x["labels"], kl, beta=p["beta"], desirable_weight=p["dw"],
                                 undesirable_weight=p["uw"], loss_type=p["type"])
    return dict(loss=tf.gather(losses, perm), rewards=tf.gather(rewards, perm)), losses, [t["p"]]


def trl_reward(T, x, p, dt):
    torch = T.torch
    cfg = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True), _metrics={"train": collections.defaultdict(list)},
        args=types.SimpleNamespace(center_rewards_coefficient=p["center"]), _total_train_tokens=0, _tp_size=1,
        accelerator=types.SimpleNamespace(gather_for_metrics=lambda v: v, gather=lambda v: v))

    def call(c, r, m):  # compute_loss returns the mean: called per pair for the per-row losses
        rewards = torch.cat([c, r]).requires_grad_()
        inputs = {"attention_mask": torch.ones(2 * len(c), 1), **({"margin": m} if p["margin"] else {})}
        loss = T.reward_loss(cfg, lambda **kw: types.SimpleNamespace(logits=rewards[:, None]), inputs)
        loss.backward()
        return loss.detach(), rewards.grad

    c, r, m = (torch.tensor(x[k], dtype=dt) for k in "crm")
    rows = torch.stack([call(c[i:i + 1], r[i:i + 1], m[i:i + 1])[0] for i in range(len(c))])
    return dict(loss=rows, grad=call(c, r, m)[1])


def ours_reward(P, tf, tape, x, p, dt):
    c, r, m = (tf.constant(x[k], dt) for k in "crm")
    tape.watch([c, r])
    losses = P.bradley_terry_loss(c, r, margin=m if p["margin"] else None)
    if p["center"] is not None:
        losses += p["center"] * P.reward_centering(c, r)
    return dict(loss=losses), losses, [c, r]


def configs(rng):
    """`(label, input kind, trl, ours, params)`; `params()` is drawn per (beta, magnitude) batch."""
    def pick(values):
        return float(rng.choice(values))
    dpo, pair = ("dpo", trl_dpo, ours_dpo), (trl_pair, ours_pair)
    rows = [(f"dpo {t}", *dpo, lambda t=t: dict(types=[t], ls=pick(LS.get(t, [0])), tau=pick([0.05, 1])))
            for t in DPO_TYPES]
    rows.append(("dpo sigmoid+bco_pair+sft (0.8,0.2,1)", *dpo,
                 lambda: dict(types=["sigmoid", "bco_pair", "sft"], weights=[0.8, 0.2, 1.0])))
    rows.append(("dpo robust+aot+ipo+discopop (1,.5,2,.3) ls", *dpo, lambda: dict(
        types=["robust", "aot", "ipo", "discopop"], weights=[1.0, 0.5, 2.0, 0.3], ls=pick([0, 0.1, 0.3]))))
    rows += [(f"dpo f={f} (8 types)", *dpo, lambda f=f, t=t: dict(
        types=[t], f=f, f_alpha=pick([0.3, 0.5, 0.9, 1.5]), ls=pick(LS.get(t, [0]))))
        for f in ("forward_kl", "js_divergence", "alpha_divergence") for t in FDIV_TYPES]
    rows.append(("simpo (simpo_loss)", "avg", *pair,
                 lambda: dict(type="simpo", via_simpo=True, ls=pick([0, 0.1]), gamma=pick([0.5, 1.0]))))
    rows.append(("simpo alpha (AlphaPO)", "avg", *pair,
                 lambda: dict(type="simpo", via_simpo=True, alpha=pick([-0.5, 0.1, 1.0]), ls=pick([0, 0.1]))))
    for t in ("sigmoid", "hinge", "ipo", "simpo"):
        kind, smooth = ("sum" if t in ("sigmoid", "hinge") else "avg"), t in ("sigmoid", "simpo")
        rows.append((f"cpo {t}", kind, *pair, lambda t=t, s=smooth: dict(type=t, ls=pick([0, 0.1, 0.3]) if s else 0)))
        rows.append(("cpo alpha (4 types)", kind, *pair,
                     lambda t=t, s=smooth: dict(type=t, alpha=pick([-0.5, 0.1, 1.0]), ls=0.1 if s else 0.0)))
    rows.append(("orpo odds_ratio_loss", "avg", *pair, lambda: dict(type="orpo")))
    rows += [(f"kto {t}", "kto", trl_kto, ours_kto, lambda t=t: dict(type=t, dw=pick([1.0, 1.33]), uw=pick([1, 0.5])))
             for t in ("kto", "apo_zero_unpaired")]
    rows.append(("reward bradley-terry", "reward", trl_reward, ours_reward,
                 lambda: dict(margin=False, center=None, unit=1.0)))
    rows.append(("reward bt+margin+centering", "reward", trl_reward, ours_reward,
                 lambda: dict(margin=True, center=pick([0.01, 1.0]), unit=1.0)))
    return rows


# -- the comparison --------------------------------------------------------------------


def run_trl(T, fn, x, p, dt):
    return {k: v.detach().to(T.torch.float64).numpy().reshape(-1) for k, v in fn(T, x, p, dt).items()}


def run_ours(P, tf, fn, x, p, dt):
    with tf.GradientTape() as tape:
        out, losses, watch = fn(P, tf, tape, x, p, dt)
        mean = tf.reduce_mean(losses)
    out["grad"] = tf.concat(tape.gradient(mean, watch, unconnected_gradients="zero"), 0)
    return {k: np.asarray(v, np.float64).reshape(-1) for k, v in out.items()}


def trl64_and_spread(T, fn, x, p, rng):
    """TRL's float64 outputs, and their largest deviation under Monte Carlo arithmetic (see the docstring)."""
    torch = T.torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map

    def perturb(t):
        if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
            return t * (1 + EPS32 * (2 * torch.rand(t.shape, dtype=torch.float64) - 1))
        return t

    class Float32ishRounding(TorchDispatchMode):
        def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func._schema.is_mutable or any(r.alias_info for r in func._schema.returns):
                return out  # in-place ops and views: left alone
            return tree_map(perturb, out)

    base = run_trl(T, fn, x, p, torch.float64)
    spread = {k: np.zeros_like(v) for k, v in base.items()}
    for _ in range(DRAWS):
        xp = {k: v * (1 + EPS32 * rng.uniform(-1, 1, v.shape)) if k not in ("nc", "nr", "labels") else v
              for k, v in x.items()}
        with Float32ishRounding():
            runs = run_trl(T, fn, xp, p, torch.float64)
        for k, v in runs.items():
            with np.errstate(invalid="ignore"):
                d = np.abs(v - base[k])
            spread[k] = np.maximum(spread[k], np.where(np.isfinite(d), d, 0.0))
    return base, spread


class Stats:
    COUNTS = ("kfin32", "ovf32", "clamp", "unrel", "unver", "f64!=")

    def __init__(self):
        self.n = self.fails = 0
        self.abs = self.rel = self.abs32 = self.ratio = 0.0
        self.nonfinite = [0, 0, 0]
        self.counts = dict.fromkeys(self.COUNTS, 0)
        self.first_fail = None

    def add(self, key, ref, ref32, ours, s, clamp, unrel, grad_scale, info):
        """One output: `ref` TRL float64, `ref32` TRL float32, `s` the float32 error estimate."""
        clamp, unrel = (np.zeros(ref.shape, bool) if m is None else m for m in (clamp, unrel))
        fin_ref, fin_ours, fin32 = np.isfinite(ref), np.isfinite(ours), np.isfinite(ref32)
        skip = clamp | unrel
        ovf32 = fin_ref & ~fin_ours & ~fin32 & ~skip
        check = fin_ref & ~skip & ~ovf32
        self.n += ref.size
        self.nonfinite = [a + int((~f).sum()) for a, f in zip(self.nonfinite, (fin_ref, fin32, fin_ours))]
        for name, m in (("kfin32", ~fin32 & fin_ours & ~skip), ("ovf32", ovf32), ("clamp", clamp),
                        ("unrel", unrel & ~clamp), ("unver", ~fin_ref & fin_ours & ~skip)):
            self.counts[name] += int(m.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.where(check, np.abs(ours - ref), 0.0)
            err = np.where(check & ~fin_ours, np.inf, err)
            tol = C * (EPS32 * np.maximum(np.abs(ref), grad_scale if key == "grad" else 1.0) + s) + C * TINY32
            bad = check & ~(err <= tol)
            if check.any():
                self.abs = max(self.abs, float(err.max()))
                self.rel = max(self.rel, float(np.max(err / np.maximum(1, np.abs(ref)))))
                self.ratio = max(self.ratio, float(np.max(err / tol)))
            if (fin32 & fin_ours).any():
                self.abs32 = max(self.abs32, float(np.max(np.abs(ours - ref32)[fin32 & fin_ours])))
        self.fails += int(bad.sum())
        if bad.any() and self.first_fail is None:
            i = int(np.flatnonzero(bad)[0])
            self.first_fail = f"{key}[{i}] {info}: TRL64 {ref[i]!r} TRL32 {ref32[i]!r} ours {ours[i]!r} tol {tol[i]:.3g}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trl-source", default=None, help="a trl package directory (default: the installed trl)")
    ap.add_argument("--cases", type=int, default=200, help="rows per (beta, magnitude) batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="run only the configs whose label contains this")
    args = ap.parse_args()
    T = load_trl(args.trl_source)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from kobjectives.ops import preference as P
    rng = np.random.default_rng(args.seed)
    stats = {}
    for label, kind, trl_fn, ours_fn, params in configs(rng):
        if args.only not in label:
            continue
        st = stats.setdefault(label, Stats())
        for beta in BETAS:
            for regime in REGIMES:
                x, p = make_inputs(kind, rng, regime, args.cases), dict(params(), beta=beta)
                info = f"beta={beta} {regime} {({k: v for k, v in p.items() if k != 'beta'})}"
                t32 = run_trl(T, trl_fn, x, p, T.torch.float32)
                t64, s = trl64_and_spread(T, trl_fn, x, p, rng)
                ours = run_ours(P, tf, ours_fn, x, p, tf.float32)
                o64 = run_ours(P, tf, ours_fn, x, p, tf.float64)  # the ops accept float64, compute in float32
                st.counts["f64!="] += sum(int(np.sum(o64[k] != v)) for k, v in ours.items())
                clamped, unrel = excluded(x, p)
                grad_scale = p.get("unit", beta) * max(p.get("dw", 1.0), p.get("uw", 1.0)) / args.cases
                for k in t64:
                    st.add(k, t64[k], t32[k], ours[k], s[k], clamped.get(k), unrel.get(k), grad_scale, info)
    head = (f"{'method/config':43s} {'values':>6s} {'max|err|':>8s} {'max rel':>8s} {'err/tol':>7s} {'|err|T32':>8s} "
            f"{'nonfinite T64/T32/ours':>22s} " + " ".join(f"{c:>6s}" for c in Stats.COUNTS) + " verdict")
    print(f"\nerrors vs TRL float64; rel = err / max(1, |T64|); pass: err <= tol, tol = C (eps32 S + s), C = {C:g}; "
          f"{args.cases} rows x {len(BETAS)} betas x {len(REGIMES)} magnitudes per type\n{head}\n{'-' * len(head)}")
    for label, st in stats.items():
        verdict = "PASS" if st.fails == 0 else f"FAIL ({st.fails})"
        print(f"{label:43s} {st.n:6d} {st.abs:8.1e} {st.rel:8.1e} {st.ratio:7.3f} {st.abs32:8.1e} "
              f"{'/'.join(map(str, st.nonfinite)):>22s} " + " ".join(f"{v:6d}" for v in st.counts.values())
              + f" {verdict}")
    failed = {k: v for k, v in stats.items() if v.fails}
    for label, st in failed.items():
        print(f"FAIL {label}: first at {st.first_fail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
