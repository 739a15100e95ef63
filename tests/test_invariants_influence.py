"""Influence estimators against float64 formulas where the mutation run (benchmarks/mutations.py)
found scale-free or undamped tests only: TRAK's ensemble is the mean, not the sum, of its
models' scores, and its default damping is a tenth of the mean eigenvalue of the sketched
Gauss-Newton matrix; the damping enters `exact` given an eigendecomposition and `arnoldi`."""

import jax
import numpy as np
import softmax_reference  # tests/ helper module

from workbench import influence, sketch

DIM = 16


def test_trak_ensemble_is_the_mean_of_its_models_with_the_default_damping():
    """Two models of a 36-parameter softmax regression, sketched to 16 dimensions: the scores
    are the mean over the models of phi_test (F^T F / n + lam I)^{-1} phi_train^T, with F the
    sketched training gradients and lam = 0.1 tr(F^T F / n) / D."""
    loss_fn = softmax_reference.loss(1e-2)
    for seed in (0, 1):
        models = [softmax_reference.problem(seed + 10 * m, 1, d=8, c=4)[0] for m in range(2)]
        _, x, y = softmax_reference.problem(seed, 44, d=8, c=4)
        train, test = (x[:40], y[:40]), (x[40:], y[40:])
        est = influence.make("trak", loss_fn, models[0], train, models=models, dim=DIM, output_fn="loss",
                             key=jax.random.key(seed))
        expected_scores, expected_self, dampings = 0.0, 0.0, []
        for m, params in enumerate(models):
            s = jax.tree.map(lambda a, m=m: a[m], est.state["sketches"])
            phi_train = np.asarray(sketch.per_example_gradients(loss_fn, params, train, s))
            phi_test = np.asarray(sketch.per_example_gradients(loss_fn, params, test, s))
            gram = phi_train.T @ phi_train / len(phi_train)
            dampings.append(0.1 * np.trace(gram) / DIM)  # a tenth of the mean eigenvalue
            inverse = np.linalg.inv(gram + dampings[-1] * np.eye(DIM))
            expected_scores = expected_scores + phi_test @ inverse @ phi_train.T / len(models)
            expected_self = expected_self + np.einsum("ij,jk,ik->i", phi_train, inverse, phi_train) / len(models)
        np.testing.assert_allclose(est.info["damping"], dampings, rtol=1e-10)
        np.testing.assert_allclose(est.scores(test), expected_scores, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(est.self_influence(), expected_self, rtol=1e-8)


def test_damping_enters_exact_from_an_eigendecomposition_and_full_space_arnoldi():
    """g_test^T (H + damping I)^{-1} g_train from NumPy's gradients, Hessian and solve, against
    `exact` given H's eigendecomposition and `arnoldi` keeping every eigenpair (k = p: no tail)."""
    l2, damping = 1e-2, 0.3  # damping of the order of H's eigenvalues: it changes every score
    loss_fn = softmax_reference.loss(l2)
    for seed in (0, 1):
        params, x, y = softmax_reference.problem(seed, 33)
        train, test = (x[:30], y[:30]), (x[30:], y[30:])
        hessian = softmax_reference.hessian(params, train[0], l2)
        g_train, g_test = (softmax_reference.per_example_grads(params, *batch, l2) for batch in (train, test))
        expected = g_test @ np.linalg.solve(hessian + damping * np.eye(len(hessian)), g_train.T)
        exact = influence.make("exact", loss_fn, params, train, damping=damping,
                               hessian=tuple(np.linalg.eigh(hessian)))
        np.testing.assert_allclose(exact.scores(test), expected, rtol=1e-9, atol=1e-12)
        arnoldi = influence.make("arnoldi", loss_fn, params, train, k=len(hessian), damping=damping,
                                 key=jax.random.key(seed))
        np.testing.assert_allclose(arnoldi.scores(test), expected, rtol=1e-7, atol=1e-10)
