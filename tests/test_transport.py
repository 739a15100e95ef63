"""workbench.transport against closed forms and independent computations (float64): the
Gaussian Monge map and W2, the Brenier map, our Sinkhorn against ott-jax's and against exact
assignments, the metrics on hand-made cases, a trainer that beats not moving, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from workbench import transport
from workbench.experiments import transport as recipes

SINKHORN = jax.jit(transport.sinkhorn, static_argnames="num_iters")


def _spd(key, dim, low=0.25, high=4.0):
    q, _ = np.linalg.qr(np.asarray(jax.random.normal(key, (dim, dim)), np.float64))
    return (q * np.exp(np.linspace(np.log(low), np.log(high), dim))) @ q.T


@pytest.mark.parametrize("dim", [1, 3, 8])
def test_gaussian_map_pushes_mu_onto_nu_and_is_a_gradient(keys, dim):
    for key in keys:
        k1, k2, k3 = jax.random.split(key, 3)
        s1, s2 = _spd(k1, dim), _spd(k2, dim)
        m1, m2 = np.asarray(jax.random.normal(k3, (2, dim)), np.float64)
        a, shift = transport.gaussian_map(m1, s1, m2, s2)
        np.testing.assert_allclose(a @ s1 @ a.T, s2, rtol=1e-9, atol=1e-9)  # Cov(A x) = S2
        np.testing.assert_allclose(a @ m1 + shift, m2, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a, a.T, atol=1e-12)  # symmetric ...
        assert np.linalg.eigvalsh(a).min() > 0  # ... positive definite: the gradient of a convex quadratic
        # independently: W2^2 = E|x - T(x)|^2 = |m1 - m2|^2 + tr((I - A) S1 (I - A)^T), and scipy's sqrtm
        root = scipy.linalg.sqrtm(s1).real
        w2 = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(root @ s2 @ root).real)
        identity = np.eye(dim)
        via_map = np.sum((m1 - m2) ** 2) + np.trace((identity - a) @ s1 @ (identity - a).T)
        assert transport.gaussian_w2_squared(m1, s1, m2, s2) == pytest.approx(w2, rel=1e-9, abs=1e-10)
        assert transport.gaussian_w2_squared(m1, s1, m2, s2) == pytest.approx(via_map, rel=1e-9, abs=1e-10)


def test_gaussian_problem_matches_its_closed_forms(key):
    problem = transport.gaussian(key, 3, dtype=jnp.float64)
    x = problem.sample_source(jax.random.fold_in(key, 1), 200_000)
    cost = np.mean(np.sum((np.asarray(x) - np.asarray(problem.true_map(x))) ** 2, 1))
    assert cost == pytest.approx(problem.w2_squared, rel=0.02)
    y = np.asarray(problem.true_map(x))
    assert np.sum(np.var(y, 0)) == pytest.approx(problem.target_variance, rel=0.02)


def test_gaussian_w2_on_commuting_covariances():
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    expected = 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2  # |m1 - m2|^2 + sum (sqrt a - sqrt b)^2
    assert transport.gaussian_w2_squared(np.zeros(3), s1, np.array([2.0, 0, 0]), s2) == pytest.approx(expected)


def test_brenier_map_is_the_gradient_of_a_convex_potential(keys):
    brenier_map = jax.jit(transport.brenier_map)
    autodiff = jax.jit(jax.grad(lambda p, z: jnp.sum(transport.brenier_value(p, z)), argnums=1))
    for key in keys[:4]:
        potential = transport.brenier_potential(key, 3, dtype=jnp.float64)
        x = jax.random.normal(jax.random.fold_in(key, 1), (64, 3), jnp.float64)
        np.testing.assert_allclose(brenier_map(potential, x), autodiff(potential, x), rtol=1e-10, atol=1e-10)
        # strongly monotone: <T(x) - T(z), x - z> >= alpha |x - z|^2
        z = jax.random.normal(jax.random.fold_in(key, 2), (64, 3), jnp.float64)
        tx, tz = brenier_map(potential, x), brenier_map(potential, z)
        inner = np.sum(np.asarray(tx - tz) * np.asarray(x - z), 1)
        assert np.all(inner >= 0.5 * np.sum(np.asarray(x - z) ** 2, 1) - 1e-10)


def test_brenier_target_moments_by_monte_carlo(key):
    problem = transport.brenier(key, 2, dtype=jnp.float64, variance_samples=50_000)
    potential = transport.brenier_potential(key, 2, dtype=jnp.float64)
    n = 40_000
    y = np.asarray(problem.sample_target(jax.random.fold_in(key, 7), n))
    # an independent computation of grad phi in numpy, on independent Gaussian samples
    x = np.random.default_rng(0).standard_normal((n, 2))
    q, b = np.asarray(potential.q), np.asarray(potential.b)
    logits = 0.5 * np.einsum("ni,kij,nj->nk", x, q, x) + x @ b.T
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    ref = 0.5 * x + np.einsum("nk,nki->ni", w, np.einsum("kij,nj->nki", q, x) + b[None])
    se = np.sqrt(np.var(y, 0) / n + np.var(ref, 0) / n)
    assert np.all(np.abs(y.mean(0) - ref.mean(0)) < 5 * se)
    assert np.sum(np.var(y, 0)) == pytest.approx(problem.target_variance, rel=0.05)
    np.testing.assert_allclose(np.asarray(problem.true_map(jnp.asarray(x))), ref, rtol=1e-9, atol=1e-9)


def test_sinkhorn_matches_ott(keys):
    from ott.geometry import pointcloud
    from ott.solvers import linear

    worst = 0.0
    for key in keys[:2]:
        x = jax.random.normal(key, (60, 3), jnp.float64)
        y = jax.random.normal(jax.random.fold_in(key, 1), (50, 3), jnp.float64) * 1.5 + 1.0
        ours = SINKHORN(x, y, 2.0, num_iters=1000)
        with jax.numpy_dtype_promotion("standard"):
            ref = linear.solve(pointcloud.PointCloud(x, y, epsilon=2.0), threshold=1e-12, max_iterations=5000)
        assert bool(ours.finite) and bool(ref.converged)
        np.testing.assert_allclose(ours.plan, ref.matrix, rtol=1e-7, atol=1e-12)
        cost_ref = float(jnp.sum(ref.matrix * transport.squared_distances(x, y)))
        assert float(ours.transport_cost) == pytest.approx(cost_ref, rel=1e-8)
        # the dual value (ott's reg_ot_cost): mean f + mean g at the final iterate
        assert float(jnp.mean(ours.f) + jnp.mean(ours.g)) == pytest.approx(float(ref.reg_ot_cost), rel=1e-7)
        # potentials agree up to a constant
        centred = lambda a: np.asarray(a) - np.mean(np.asarray(a))
        np.testing.assert_allclose(centred(ours.f), centred(ref.f), atol=1e-6)
        np.testing.assert_allclose(centred(ours.g), centred(ref.g), atol=1e-6)
        worst = max(worst, float(jnp.max(jnp.abs(ours.plan - ref.matrix))))
    assert worst < 1e-10


def test_sinkhorn_tends_to_the_exact_assignment_and_stays_finite(keys):
    for key in keys[:4]:
        x = jax.random.normal(key, (30, 2), jnp.float64)
        y = jax.random.normal(jax.random.fold_in(key, 1), (30, 2), jnp.float64) + 0.5
        perm = transport.assignment(x, y)
        exact_cost = float(np.mean(np.sum((np.asarray(x) - np.asarray(y)[perm]) ** 2, 1)))
        results = [SINKHORN(x, y, eps, num_iters=4000) for eps in (0.3, 0.1, 0.01)]
        gaps = [abs(float(r.transport_cost) - exact_cost) for r in results]
        assert all(float(r.marginal_error) < 1e-3 for r in results)
        assert gaps[2] < gaps[1] < gaps[0] and gaps[2] < 0.005 * exact_cost
        # the plan concentrates on the assignment
        assert float(np.sum(np.asarray(results[2].plan)[np.arange(30), perm])) > 0.7
        tiny = transport.sinkhorn(x, y, 1e-9, num_iters=50)  # the kernel exp(-c/eps) underflows: logs do not
        assert bool(tiny.finite) and np.all(np.isfinite(np.asarray(tiny.plan)))
        np.testing.assert_allclose(np.asarray(tiny.plan).sum(0), 1 / 30, rtol=1e-5)  # after the g update


def test_sinkhorn_one_iteration_misses_the_row_marginal(key):
    x = jax.random.normal(key, (40, 2), jnp.float64)
    y = 3.0 * jax.random.normal(jax.random.fold_in(key, 1), (40, 2), jnp.float64)
    assert float(transport.sinkhorn(x, y, 1.0, num_iters=1).marginal_error) > 0.1
    assert float(transport.sinkhorn(x, y, 1.0, num_iters=2000).marginal_error) < 1e-8


def test_entropic_map_extends_the_barycentric_projection(key):
    x = jax.random.normal(key, (50, 2), jnp.float64)
    y = jax.random.normal(jax.random.fold_in(key, 1), (40, 2), jnp.float64) * 2.0
    result = transport.sinkhorn(x, y, 0.3, num_iters=500)
    np.testing.assert_allclose(transport.entropic_map(x, y, result.g, 0.3),
                               transport.barycentric_projection(result.plan, y), rtol=1e-10, atol=1e-10)


def test_exact_coupling_in_jit_is_the_assignment(key):
    x = jax.random.normal(key, (20, 2), jnp.float64)
    y = jax.random.normal(jax.random.fold_in(key, 1), (20, 2), jnp.float64)
    paired = jax.jit(lambda a, b: transport.couple(a, b, key, "exact"))(x, y)
    np.testing.assert_array_equal(paired, np.asarray(y)[transport.assignment(x, y)])


def test_metrics_on_hand_made_cases():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    assert transport.l2_uvp(x + np.array([1.0, 0.0]), x, 2.0) == pytest.approx(50.0)
    assert transport.l2_uvp(x, x, 1.0) == 0.0
    assert transport.transport_cost(x, x + np.array([0.0, 2.0])) == pytest.approx(4.0)
    assert transport.cost_ratio(x, x + np.array([0.0, 2.0]), 8.0) == pytest.approx(0.5)
    assert transport.assignment_w2(x, x[::-1]) == pytest.approx(0.0)  # a permutation is no transport
    assert transport.assignment_w2(x, x[[2, 0, 1]] + np.array([3.0, 4.0])) == pytest.approx(5.0)
    report = transport.w2_against_floor(x + np.array([0.0, 1.0]), x, x[::-1])
    assert (report.w2, report.floor, report.excess) == pytest.approx((1.0, 0.0, 1.0))
    # the assignment map of a shifted copy is the shift
    np.testing.assert_allclose(transport.assignment_map(x, x[[1, 2, 0]] + 0.1), x + 0.1)


def test_icnn_potential_is_convex_and_residual_map_starts_at_identity(key):
    k1, k2, k3 = jax.random.split(key, 3)
    pot = transport.potential_model(k1, 3, 16, 3, param_dtype=jnp.float64)
    pot = pot._replace(params=jax.tree.map(lambda a: a + 0.5 * jax.random.normal(k2, a.shape, a.dtype), pot.params))
    grad = jax.jit(transport.potential_gradient(pot))
    x = jax.random.normal(k3, (200, 3), jnp.float64)
    z = jax.random.normal(jax.random.fold_in(k3, 1), (200, 3), jnp.float64)
    inner = np.sum(np.asarray(grad(pot.params, x) - grad(pot.params, z)) * np.asarray(x - z), 1)
    assert np.all(inner >= -1e-10)  # the gradient of a convex function is monotone
    m = transport.map_model(k1, 3, param_dtype=jnp.float64)
    np.testing.assert_array_equal(m.apply_fn(m.params, x), x)


def test_monge_gap_through_ott_is_small_for_the_optimal_map(key):
    x = jax.random.normal(key, (64, 2), jnp.float64)
    optimal = x @ jnp.diag(jnp.array([2.0, 0.5]))  # the gradient of a convex quadratic
    rotated = x @ jnp.array([[0.0, -1.0], [1.0, 0.0]])  # a rotation: a push-forward, far from optimal
    assert float(transport.monge_gap(x, optimal, 0.01)) < 0.1  # the entropic bias of 64 points
    assert float(transport.monge_gap(x, rotated, 0.01)) > 0.5


def test_sinkhorn_regression_beats_not_moving(keys):
    problem = transport.gaussian(jax.random.key(3), 2)
    x = problem.sample_source(jax.random.key(4), 500)
    truth = problem.true_map(x)
    still = transport.l2_uvp(x, truth, problem.target_variance)
    for key in keys[:2]:
        model = transport.map_model(key, 2, hidden=16)
        fitted = transport.train_sinkhorn_regression(model, problem.sample_source, problem.sample_target,
                                                     jax.random.fold_in(key, 1), num_steps=150, batch_size=64,
                                                     learning_rate=1e-2, num_iters=50)
        assert transport.l2_uvp(np.asarray(fitted(x)), truth, problem.target_variance) < 0.25 * still
        assert fitted.losses.shape == (150,) and bool(jnp.all(jnp.isfinite(fitted.losses)))


def test_recipes_score_the_true_map_at_zero():
    problem = recipes.make_problem("gaussian", 2)
    row = recipes.evaluate(problem, problem.true_map, jax.random.key(0), 300)
    assert row.l2_uvp == pytest.approx(0.0, abs=1e-8) and row.cost_ratio == pytest.approx(1.0, rel=0.15)
    assert row.w2 < 2 * row.floor + 0.2


def test_bad_inputs_get_clear_errors(key):
    eye = np.eye(2)
    with pytest.raises(ValueError, match="same dimension"):
        transport.gaussian_map(np.zeros(2), eye, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="positive definite"):
        transport.gaussian_map(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), eye)
    with pytest.raises(ValueError, match="symmetric"):
        transport.gaussian_w2_squared(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), eye)
    with pytest.raises(ValueError, match="cov2 must be"):
        transport.gaussian_map(np.zeros(2), eye, np.zeros(2), np.eye(3))
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="same point dimension"):
        transport.sinkhorn(x, jnp.zeros((4, 3)), 0.1)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="epsilon must be a positive"):
            transport.sinkhorn(x, x, bad)
    problem = transport.gaussian(key, 2)
    model = transport.map_model(key, 2, hidden=4)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        transport.train_sinkhorn_regression(model, problem.sample_source, problem.sample_target, key, epsilon=0.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        transport.train_flow(model, problem.sample_source, problem.sample_target, key, kind="nearest")
    with pytest.raises(ValueError, match="coupling must be one of"):
        transport.train_flow_matching(transport.velocity_model(key, 2, 4), problem.sample_source,
                                      problem.sample_target, key, coupling="random")
    with pytest.raises(ValueError, match="same shape"):
        transport.l2_uvp(np.zeros((3, 2)), np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        transport.assignment(np.zeros((3, 2)), np.zeros((4, 2)))


def test_discrepancies_and_divergence_vanish_on_equal_batches(key):
    y = jax.random.normal(key, (40, 2), jnp.float64)
    shifted = y + jnp.array([1.0, 0.0])
    for kind in transport.DISCREPANCIES:
        assert float(transport.discrepancy(kind, y, y)) == pytest.approx(0.0, abs=1e-12)
        assert float(transport.discrepancy(kind, shifted, y)) > 1e-3
    assert float(transport.sinkhorn_divergence(y, y, 0.1)) == pytest.approx(0.0, abs=1e-10)
    assert float(transport.sinkhorn_divergence(shifted, y, 0.1)) == pytest.approx(1.0, rel=0.1)  # ~ |shift|^2
    paired = transport.couple(y, shifted, key, "sinkhorn", epsilon=0.002, num_iters=3000)
    # a translation: the plan sends (almost) every point to its own image
    assert np.mean(np.all(np.asarray(paired) == np.asarray(shifted), axis=1)) > 0.9


def test_one_compiled_trainer_serves_every_problem_of_the_same_shapes(key):
    """Compile once: the problem's samples are data, not part of the compiled trainer, and
    networks of one architecture share their apply function."""
    assert transport.map_model(key, 2, 8).apply_fn is transport.map_model(jax.random.fold_in(key, 1), 2, 8).apply_fn
    problems = [transport.gaussian(jax.random.key(0), 2), transport.gaussian(jax.random.key(1), 2),
                transport.brenier(jax.random.key(2), 2, variance_samples=1000), transport.disks()]
    compiled = transport.training._adam_steps._cache_size
    sizes = []
    for i, problem in enumerate(problems):
        model = transport.map_model(jax.random.fold_in(key, i), 2, 8)
        fitted = transport.train_flow(model, problem.sample_source, problem.sample_target, key, kind="symmetric",
                                      cost_weight=0.25 * i, num_steps=7, batch_size=16)
        assert bool(jnp.all(jnp.isfinite(fitted.losses)))
        sizes.append(compiled())
    assert sizes[1:] == sizes[:1] * 3, f"trainer programs after each problem: {sizes}"


def test_training_in_chunks_matches_one_chunk(key, monkeypatch):
    """Long runs draw their batches in chunks; the result is the one of a single chunk."""
    problem = transport.gaussian(jax.random.key(5), 2, dtype=jnp.float64)
    velocity = transport.velocity_model(key, 2, 8, param_dtype=jnp.float64)
    k_map, k_u, k_v = jax.random.split(key, 3)
    t_model = transport.map_model(k_map, 2, 8, param_dtype=jnp.float64)
    u, v = (transport.potential_model(k, 2, 8, kind="mlp", param_dtype=jnp.float64) for k in (k_u, k_v))

    def fit_both():
        flow = transport.train_flow_matching(velocity, problem.sample_source, problem.sample_target, key,
                                             coupling="sinkhorn", num_steps=30, batch_size=16)
        seguy = transport.train_seguy(t_model, u, v, problem.sample_source, problem.sample_target, key,
                                      num_steps=30, batch_size=16)
        return flow, seguy

    whole = fit_both()
    monkeypatch.setattr(transport.training, "_CHUNK_BYTES", 7 * 16 * 2 * 8 * 2)  # 6 or 7 steps a chunk
    chunked = fit_both()
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-12, atol=1e-14)
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14), a.params, b.params)
