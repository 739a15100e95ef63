"""Property-based tests of the public boundary: for inputs drawn by Hypothesis (sizes including
zero and negative ones, NumPy integers, NaN and inf, empty and one-example data, option names with
typos, any PRNG key), every call gives the right answer or a clear error naming the argument, and
never a silent value. Profiles: `workbench` (25 derandomised examples per property, the suite's)
and `thorough` (HYPOTHESIS_PROFILE=thorough: 400 random ones).

Inputs reuse a few shapes, so a valid call compiles once per shape and later examples run the
compiled program."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from plain_logreg import plain_logreg  # tests/ helper module

from workbench import curvature, data, influence, sketch, spectrum, train
from workbench.core import numerics, statistics

WHICH = ("largest", "smallest", "both")

SIZES = st.one_of(st.integers(-3, 12), st.integers(-3, 12).map(np.int64), st.sampled_from([0.5, 2.0, True, None, "3"]))


def sizes(*valid):
    """A few valid sizes (each compiles once) or any size SIZES draws, valid or not."""
    return st.one_of(st.sampled_from([*valid, np.int64(valid[-1])]), st.integers(-3, 0), SIZES)
KEYS = st.one_of(st.sampled_from([0, 2**32 - 1, 1]), st.integers(0, 2**32 - 1))
REALS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.sampled_from([-1.0, 0.0, 1e-300]))


def _clear(err: Exception, *names: str) -> bool:
    """A clear error names at least one of the arguments it is about."""
    return any(re.search(rf"\b{re.escape(n)}\b", str(err)) for n in names)


def _is_int(value, least: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value >= least


@given(value=SIZES, least=st.integers(0, 2))
def test_positive_int_check_accepts_exactly_the_integers_at_least_least(value, least):
    if _is_int(value, least):
        assert numerics.check_positive_int("n", value, least) == int(value)
    else:
        with pytest.raises(ValueError, match=r"n must be an int >= \d+"):
            numerics.check_positive_int("n", value, least)


@given(value=st.one_of(REALS, st.sampled_from(["1", None, True, np.float32(2.0)])))
def test_nonnegative_check_accepts_exactly_the_finite_nonnegative_reals(value):
    ok = not isinstance(value, bool | str | type(None)) and np.isfinite(value) and value >= 0
    if ok:
        assert numerics.check_nonnegative("l2", value) == float(value)
    else:
        with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
            numerics.check_nonnegative("l2", value)


@given(n=sizes(1, 6), num_classes=sizes(2, 3), seed=KEYS)
def test_make_classification_returns_the_asked_set_or_names_the_bad_size(n, num_classes, seed):
    key = jax.random.key(seed)
    try:
        ds = data.make_classification(key, n, 3, num_classes)
    except (ValueError, TypeError) as err:
        event(f"refused: {type(err).__name__}")
        assert not (_is_int(n, 1) and _is_int(num_classes, 2)), err
        assert _clear(err, "n", "num_classes"), err
        return
    assert _is_int(n, 1) and _is_int(num_classes, 2)
    assert len(ds) == n and ds.x.shape[0] == n
    assert np.all((np.asarray(ds.y) >= 0) & (np.asarray(ds.y) < num_classes))
    assert np.all(np.isfinite(np.asarray(ds.x)))


_SYMMETRIC = {dim: (lambda a: a + a.T)(np.random.default_rng(dim).normal(size=(dim, dim))) for dim in (5, 8)}


@given(dim=st.sampled_from([5, 8]), k=st.one_of(st.integers(1, 5), SIZES),
       which=st.sampled_from(["largest", "smallest", "both", "largest", "smallest", "both", "top", ""]),
       seed=KEYS, scale=st.sampled_from([1.0, 0.0]))
def test_top_eigenpairs_match_eigh_or_name_the_bad_argument(dim, k, which, seed, scale):
    """scale 0: the zero matrix, a Krylov space invariant at its first step (where key(0) once
    restarted with its own start vector and reported a spurious eigenvalue)."""
    matrix = scale * _SYMMETRIC[dim] + (1 - scale) * 2 * np.eye(dim)  # scale 0: 2 I
    op = curvature.from_matrix(jnp.asarray(matrix))
    try:
        result = spectrum.top_eigenpairs(op, jax.random.key(seed), k, which=which)
    except ValueError as err:
        event(f"refused: {type(err).__name__}")
        assert not (_is_int(k, 1) and k <= dim and which in WHICH), err
        assert _clear(err, "k", "which"), err
        return
    event("answered")
    assert _is_int(k, 1) and k <= dim and which in WHICH
    eigs = np.linalg.eigvalsh(matrix)
    top, bottom = eigs[::-1][: -(-k // 2) if which == "both" else k], eigs[: k // 2 if which == "both" else k]
    expected = {"largest": eigs[::-1][:k], "smallest": eigs[:k], "both": np.concatenate([top, bottom])}[which]
    np.testing.assert_allclose(np.sort(result.values), np.sort(expected), atol=1e-8 * np.abs(eigs).max())
    assert np.all(result.converged)


@given(k=st.one_of(st.sampled_from([1, 3, np.int64(3)]), SIZES), num_iters=st.one_of(st.sampled_from([2, 20]), SIZES),
       seed=KEYS)
def test_sharpness_gives_k_true_eigenvalues_or_names_the_argument(k, num_iters, seed):
    curvature_values = np.linspace(0.01, 0.14, 14)  # a 14-parameter quadratic: Hessian diag(these)

    def loss(p, batch):
        return 0.5 * jnp.sum(jnp.asarray(curvature_values) * p["w"] ** 2) + 0 * jnp.sum(batch)

    params, batch = {"w": jnp.ones(14)}, jnp.ones((3, 1))
    try:
        values = spectrum.sharpness(loss, params, batch, jax.random.key(seed), k=k, num_iters=num_iters)
    except ValueError as err:
        event(f"refused: {type(err).__name__}")
        assert not (_is_int(k, 1) and k <= 14 and _is_int(num_iters, 1)), err
        assert _clear(err, "k", "num_iters"), err
        return
    except RuntimeError as err:  # a Krylov space too shallow to converge says so
        assert _is_int(num_iters, 1) and num_iters <= k + 2, err
        assert re.search("did not converge.*raise num_iters", str(err)), err
        return
    event("answered")
    assert _is_int(k, 1) and k <= 14 and _is_int(num_iters, 1)
    np.testing.assert_allclose(values, curvature_values[::-1][:k], rtol=1e-8)


_LOGREG = plain_logreg(0.1)
_X = np.random.default_rng(0).normal(size=(12, 3))
_DATA = (jnp.asarray(_X), jnp.asarray(np.arange(12) % 3))
_PARAMS = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(3, 3))), "b": jnp.zeros(3)}


@given(l2=REALS, kind=st.sampled_from(["hessian", "ggn", "fisher", "gauss-newton"]))
def test_curvature_operator_matches_dense_or_refuses_the_argument(l2, kind):
    try:
        op = curvature.operator(_LOGREG.loss_fn, _PARAMS, _DATA, kind, predict_fn=_LOGREG.predict_fn,
                                output_loss_fn=_LOGREG.output_loss_fn, l2=l2)
    except ValueError as err:
        event(f"refused: {type(err).__name__}")
        # a Hessian differentiates the loss as given: an l2 it would ignore is refused
        assert not (np.isfinite(l2) and l2 >= 0 and kind in curvature.KINDS and (kind != "hessian" or l2 == 0)), err
        assert _clear(err, "l2", "kind"), err
        return
    assert np.isfinite(l2) and l2 >= 0 and kind in curvature.KINDS and (kind != "hessian" or l2 == 0)
    dense = np.asarray(op.dense())
    np.testing.assert_allclose(dense, dense.T, atol=1e-12)
    if kind != "hessian":  # the data term is PSD, plus l2 I: nothing below l2
        assert np.linalg.eigvalsh(dense).min() >= l2 - 1e-10 * max(1.0, l2)


@given(predicted=st.lists(st.floats(-5, 5) | st.sampled_from([np.nan, np.inf]), min_size=1, max_size=6),
       actual_shift=st.floats(-1, 1), constant=st.booleans())
def test_correlations_are_in_range_or_refused(predicted, actual_shift, constant):
    predicted = np.asarray(predicted)
    actual = np.full_like(predicted, 2.0) if constant else predicted[::-1] + actual_shift * np.arange(predicted.size)
    try:
        result = statistics.correlations(predicted, actual)
    except ValueError as err:
        event(f"refused: {type(err).__name__}")
        finite = np.all(np.isfinite(predicted)) and np.all(np.isfinite(actual))
        assert not finite or np.ptp(predicted) == 0 or np.ptp(actual) == 0, err
        assert _clear(err, "predicted", "actual"), err
        return
    assert all(-1 - 1e-12 <= v <= 1 + 1e-12 for v in result), result


@given(scores=st.lists(st.floats(-3, 3) | st.just(np.nan), min_size=0, max_size=8),
       flags=st.lists(st.booleans(), min_size=0, max_size=8))
def test_auc_is_a_probability_or_refused(scores, flags):
    size = min(len(scores), len(flags))
    scores, positives = np.asarray(scores[:size]), np.asarray(flags[:size], bool)
    try:
        value = statistics.auc(scores, positives)
    except ValueError as err:
        event(f"refused: {type(err).__name__}")
        assert size == 0 or positives.all() or not positives.any() or not np.all(np.isfinite(scores)), err
        return
    assert 0.0 <= value <= 1.0
    assert positives.any() and not positives.all() and np.all(np.isfinite(scores))


_OPTIONS = ["damping", "dampin", "num_iters", "numiters", "key", "k", "tol", "chunk_size", "kind", "scale", "bogus"]


@given(name=st.sampled_from(sorted(influence.ESTIMATORS) + ["cgg", "Exact"]),
       option=st.sampled_from(_OPTIONS))
def test_influence_make_lists_the_valid_names_and_options(name, option):
    if name not in influence.ESTIMATORS:
        with pytest.raises(ValueError, match=r"unknown influence estimator .*choose one of \["):
            influence.make(name, _LOGREG.loss_fn, _PARAMS, _DATA)
        return
    if option in influence.option_names(name):
        return  # a valid option: its values are the factory's business, tested with it
    with pytest.raises(ValueError, match=rf"unknown option\(s\) \['{option}'\].*accepts \["):
        influence.make(name, _LOGREG.loss_fn, _PARAMS, _DATA, **{option: 1})


@given(batch_size=sizes(4, 12), num_steps=st.integers(-1, 3))
def test_optimize_trains_or_names_the_bad_size(batch_size, num_steps):
    try:
        result = train.optimize(_LOGREG.loss_fn, _PARAMS, _DATA, jax.random.key(0), optimizer=optax.sgd(0.1),
                                num_steps=num_steps, batch_size=batch_size)
    except ValueError as err:
        event(f"refused: {type(err).__name__}")
        assert not ((batch_size is None or _is_int(batch_size, 1)) and _is_int(num_steps, 0)), err
        assert _clear(err, "batch_size", "num_steps"), err
        return
    assert (batch_size is None or _is_int(batch_size, 1)) and _is_int(num_steps, 0)
    assert result.losses.shape == (num_steps,) and np.all(np.isfinite(result.losses))


@given(kind=st.sampled_from(["dense", "countsketch", "srht", "fjl", "affd", "qk", "gaussian"]),
       dim_in=st.one_of(st.sampled_from([12, 64]), SIZES), dim_out=st.one_of(st.sampled_from([4, 8]), SIZES),
       seed=KEYS)
def test_sketch_make_builds_the_asked_shape_or_names_the_argument(kind, dim_in, dim_out, seed):
    try:
        s = sketch.make(kind, jax.random.key(seed), dim_in, dim_out)
    except ValueError as err:
        event(f"refused: {type(err).__name__}")
        ok = kind in sketch.KINDS and _is_int(dim_in, 1) and _is_int(dim_out, 1)
        assert not ok or dim_out > dim_in or kind in ("affd", "qk"), err  # shape rules of each kind
        assert _clear(err, "kind", "dim_in", "dim_out", "dim", "D", "N"), err
        return
    assert s.dim_in == dim_in and s.dim_out == dim_out
    x = jnp.asarray(np.random.default_rng(0).normal(size=dim_in))
    y = np.asarray(s.apply(x))
    assert y.shape == (dim_out,) and np.all(np.isfinite(y))


@given(poison=st.sampled_from([np.nan, np.inf, -np.inf]), where=st.sampled_from(["params", "data"]),
       name=st.sampled_from(["exact", "grad_dot", "cg"]))
def test_non_finite_params_or_data_are_refused_by_name(poison, where, name):
    params, (x, y) = _PARAMS, _DATA
    if where == "params":
        params = {**params, "b": params["b"].at[1].set(poison)}
    else:
        x = x.at[3, 0].set(poison)
    with pytest.raises(ValueError, match="params|train_data"):
        influence.make(name, _LOGREG.loss_fn, params, (x, y))


@settings(max_examples=15)  # each (size, dtype, target) compiles its own program
@given(n=st.integers(0, 2), dtype=st.sampled_from([np.float64, np.float32, np.int32, np.float16]),
       target=st.sampled_from(["operator", "per_example_gradients", "influence"]))
def test_tiny_or_mistyped_data_and_params_answer_or_name_the_cause(n, dtype, target):
    """Empty and one-example data, integer and half-precision params: a right answer or an
    error naming the data or the params."""
    params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), dtype), _PARAMS)
    x, y = _DATA[0][:n].astype(dtype if np.issubdtype(dtype, np.floating) else np.float64), _DATA[1][:n]
    floating = np.issubdtype(dtype, np.floating)
    try:
        if target == "operator":
            op = curvature.operator(_LOGREG.loss_fn, params, (x, y))
            out = np.asarray(op.mv(jnp.ones(op.dim, op.dtype)))
        elif target == "per_example_gradients":
            out = np.asarray(sketch.per_example_gradients(_LOGREG.loss_fn, params, (x, y), None))
            assert out.shape == (n, 12)
        else:
            est = influence.make("grad_dot", _LOGREG.loss_fn, params, (x, y))
            out = np.asarray(est.self_influence())
            assert out.shape == (n,)
    except (ValueError, TypeError) as err:
        event(f"refused: {type(err).__name__}")
        assert n == 0 or not floating or (target == "influence" and n < 2) or dtype == np.float16, err
        assert _clear(err, "data", "train_data", "params", "examples"), err
        return
    event("answered")
    assert n >= 1 and floating
    assert np.all(np.isfinite(out))
