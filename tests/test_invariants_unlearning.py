"""Selective synaptic dampening against its formula where the choices matter: the mutation run
(benchmarks/mutations.py) found that the existing check (a forget set of 10%, lam < alpha)
cannot tell F_full from F_retain, nor see the cap of the dampening factor at 1."""

import numpy as np
import softmax_reference  # tests/ helper module

from workbench import unlearning as U
from workbench.data import Dataset


def _fisher_diagonal(params, data):
    """Mean squared per-example gradient of the cross-entropy, from NumPy's gradients."""
    return np.mean(softmax_reference.per_example_grads(params, *data) ** 2, axis=0)


def test_ssd_selects_against_the_full_data_fisher_and_caps_the_dampening_at_one():
    """Half of the data forgotten, so F_full = (F_forget + F_retain) / 2 is far from F_retain:
    of the 28 weights, a few have F_forget / F_retain between alpha and the F_full threshold.
    Selecting against F_retain would dampen those too, visibly only when lam < alpha (else their
    factor lam F_full / F_forget >= lam / alpha is capped to 1); the cap itself shows when
    lam > alpha. Both settings, on three problems."""
    loss_fn = softmax_reference.loss(0.0)
    for seed in (0, 1, 2):
        params, x, y = softmax_reference.problem(seed, 40, d=6, c=4, scale=0.5)
        s = U.split(Dataset(x, y), np.arange(20))
        ff, fr = _fisher_diagonal(params, s.forget), _fisher_diagonal(params, s.retain)
        fd = (ff + fr) / 2  # |D_f| = |D_r|
        theta = np.concatenate([np.ravel(params["b"]), np.ravel(params["w"])])
        for alpha, lam in ((1.2, 0.5), (1.2, 2.0)):
            out = U.ssd(loss_fn, params, s.forget, s.retain, alpha=alpha, lam=lam)
            selected = ff > alpha * fd
            beta = np.minimum(lam * fd / np.where(selected, ff, 1.0), 1.0)
            got = np.concatenate([np.ravel(out.params["b"]), np.ravel(out.params["w"])])
            np.testing.assert_allclose(got, np.where(selected, theta * beta, theta), rtol=1e-10,
                                       err_msg=f"seed {seed}, alpha {alpha}, lam {lam}")
            # the configuration tells the choices apart
            if lam < alpha:
                assert np.any((ff > alpha * fr) & ~selected & (lam * fd < ff)), seed
            else:
                assert np.any(selected & (lam * fd > ff)), seed
