"""OWL-QN step by step against a plain NumPy transcription of Andrew & Gao (2007), float64.

`test_distributed` checks that OWL-QN reaches the L1 optimum; an optimum is reached by many
wrong algorithms (the mutation run of benchmarks/mutations.py left the quasi-Newton direction
unprojected and nothing failed). Here every iterate's objective is compared with the
reference, on a problem with correlated features where the projection of the direction onto
the descent orthant is active, for more steps than the memory holds curvature pairs (the
comparison found the second loop of the two-loop recursion visiting the ring buffer in slot
order, not oldest first, once it had wrapped)."""

import functools

import jax.numpy as jnp
import numpy as np

from workbench import distributed as dist

L1, MEMORY = 0.01, 4


def _problem(seed):
    """Logistic regression on 80 examples of 6 strongly correlated features."""
    rng = np.random.default_rng(seed)
    mixing = np.eye(6) + 0.9 * rng.normal(size=(6, 6))
    x = rng.normal(size=(80, 6)) @ mixing
    t = (x @ rng.normal(size=6) + 0.5 * rng.normal(size=80) > 0).astype(np.float64)
    return x, t


def _loss_fn(params, batch):
    x, t = batch
    z = x @ params["w"] + params["b"][0]
    return jnp.mean(jnp.logaddexp(0.0, z) - t * z)


def _value_and_grad(x, t, theta):
    """The mean logistic loss and its gradient in theta = (w, b), in NumPy."""
    z = x @ theta[:-1] + theta[-1]
    r = (1.0 / (1.0 + np.exp(-z)) - t) / len(t)
    return np.mean(np.logaddexp(0.0, z) - t * z), np.concatenate([x.T @ r, [r.sum()]])


def _pseudo_gradient(g, x, l1):
    at_zero = np.where(g + l1 < 0, g + l1, np.where(g - l1 > 0, g - l1, 0.0))
    return np.where(x != 0, g + l1 * np.sign(x), at_zero)


def _owlqn_reference(value_and_grad, theta, l1, num_steps, memory):
    """OWL-QN as `workbench.distributed.owlqn` documents it: the L-BFGS two-loop direction on the
    pseudo-gradient (scaled by s.y / y.y), zeroed where it does not descend along -pg, steps
    projected onto the orthant of the iterate (or of -pg at zero), backtracking by halves from
    1 (from 1 / |pg| on the first step) until an Armijo decrease (c1 = 1e-4) along pg.
    Returns the objective at every iterate, the last iterate, how many direction components
    were zeroed and how many curvature pairs were kept in all (the newest `memory` are used)."""
    f, g = value_and_grad(theta)
    values, pairs, zeroed, kept = [f + l1 * np.abs(theta).sum()], [], 0, 0
    for _ in range(num_steps):
        pg = _pseudo_gradient(g, theta, l1)
        q, alphas = pg.copy(), []
        for s, y in reversed(pairs):
            alphas.append(s @ q / (s @ y))
            q = q - alphas[-1] * y
        r = q * (pairs[-1][0] @ pairs[-1][1] / (pairs[-1][1] @ pairs[-1][1]) if pairs else 1.0)
        for (s, y), a in zip(pairs, reversed(alphas), strict=True):
            r = r + (a - y @ r / (s @ y)) * s
        d = -r
        uphill = d * pg >= 0
        zeroed += int(np.count_nonzero(uphill & (d != 0)))
        d = np.where(uphill, 0.0, d)
        orthant = np.where(theta != 0, np.sign(theta), -np.sign(pg))
        objective = f + l1 * np.abs(theta).sum()
        alpha = 1.0 if pairs else 1.0 / np.linalg.norm(pg)
        for _ in range(61):
            trial = theta + alpha * d
            trial = np.where(np.sign(trial) == orthant, trial, 0.0)
            f_new, g_new = value_and_grad(trial)
            if f_new + l1 * np.abs(trial).sum() <= objective + 1e-4 * pg @ (trial - theta):
                break
            alpha *= 0.5
        else:  # no decrease: OWL-QN records the iterate once more and stops there
            values.append(objective)
            break
        s, y = trial - theta, g_new - g
        if s @ y > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            pairs, kept = (pairs + [(s, y)])[-memory:], kept + 1
        theta, f, g = trial, f_new, g_new
        values.append(f + l1 * np.abs(theta).sum())
    return np.asarray(values), theta, zeroed, kept


def test_owlqn_iterates_follow_the_reference_with_the_projected_direction():
    for seed in (0, 1, 2):
        x, t = _problem(seed)
        steps = 12
        ref_values, ref_theta, zeroed, kept = _owlqn_reference(
            functools.partial(_value_and_grad, x, t), np.zeros(7), L1, steps, MEMORY)
        assert zeroed > 0, "the problem must exercise the projection of the direction"
        assert kept > MEMORY + 2, "the problem must wrap the ring buffer of curvature pairs"
        r = dist.owlqn(_loss_fn, {"w": np.zeros(6), "b": np.zeros(1)}, dist.shard_examples((x, t)),
                       l1=L1, num_steps=steps, tol=0.0, memory_size=MEMORY, require_convergence=False)
        np.testing.assert_allclose(r.values, ref_values, rtol=1e-9, err_msg=f"seed {seed}")
        np.testing.assert_allclose(np.concatenate([r.params["w"], r.params["b"]]), ref_theta, atol=1e-8)
