"""K-FAC and EK-FAC influence on a digits MLP against dense references: how faithful is the
Kronecker factorisation, and where does it lose?

A 64-32-10 tanh MLP (2410 parameters, l2 1e-3), trained with Adam on the first N digits
training examples in float64. For several seeds (model init, label samples), the Spearman rank
correlation over the training set of each estimator's scores against
- "block": the exact per-layer block-diagonal GGN inverse at the same per-layer damping as
  EK-FAC (0.1 x the mean EK-FAC eigenvalue), so only the Kronecker approximation differs;
- "exact": full exact influence (`make("exact")`: the objective's Hessian, damping just above
  -lambda_min + 0.01, `influence.damping_above_min_eigenvalue`);
- "ggn": the full (not block) GGN inverse at the mean of the block reference's dampings;
averaged over test points. Estimators: EK-FAC and K-FAC with kronfluence's defaults (true Fisher,
one sampled label per example, damping 0.1 x mean eigenvalue), EK-FAC with 16 sampled labels, with
the exact expectation over labels ("ggn") and with the data labels ("empirical"). Per layer: the scores restricted to one layer against that layer's
exact block (where the factorisation loses). Times: the fit (two passes over the data) and a
query (scores of the test points), warm and first call apart.

    PYTHONPATH=. python benchmarks/bench_kfac.py [--quick]

Writes benchmarks/results/kfac.json and .md (_quick suffix with --quick).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from workbench import curvature, data, influence, models, train  # noqa: E402
from workbench.core.per_example import flat_per_example_grads, mean_loss  # noqa: E402
from workbench.core.statistics import spearman_rows  # noqa: E402
from workbench.curvature import kfac  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def layer_masks(fn, layers):
    """{layer name: boolean mask over ravel_pytree(params)} of each covered layer's kernel and bias."""
    masks = {}
    for layer in layers:
        keys = {layer.weight} | ({layer.bias} if layer.bias else set())
        tree = jax.tree_util.tree_map_with_path(
            lambda path, a, keys=keys: jnp.full(a.shape, tuple(k.key for k in path) in keys), fn.params)
        masks[layer.name] = np.asarray(ravel_pytree(tree)[0]).astype(bool)
    return masks


def block_inverse_scores(ggn, masks, dampings, l2, train_grads, test_grads):
    """Scores with the per-layer block-diagonal (GGN + damping_l + l2)^-1, total and per layer."""
    total, per_layer = 0.0, {}
    for name, mask in masks.items():
        block = ggn[np.ix_(mask, mask)] + (dampings[name] + l2) * np.eye(mask.sum())
        solved = np.linalg.solve(block, test_grads[:, mask].T).T
        per_layer[name] = solved @ train_grads[:, mask].T
        total = total + per_layer[name]
    return total, per_layer


def run(seed: int, n_train: int, n_test: int, num_steps: int) -> dict:
    train_full, test_full = data.load_digits(seed=0, dtype=jnp.float64)
    train_data = train_full.take(jnp.arange(n_train))
    test_data = test_full.take(jnp.arange(seed * n_test, (seed + 1) * n_test))
    fn = models.functional(models.MLP(64, [32], 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float64), l2=1e-3)
    result = train.train(fn, fn.params, train_data, None, optimizer=optax.adam(3e-3), num_steps=num_steps,
                         progress=False)
    params = result.params
    loss = float(fn.loss_fn(params, train_data))
    accuracy = models.accuracy(fn.predict_fn, params, test_full)
    key = jax.random.key(100 + seed)

    rows = {}
    # EK-FAC / K-FAC through the estimator interface (true Fisher, kronfluence's defaults)
    start = time.perf_counter()
    factors = kfac.fit(fn, params, train_data, fisher="true", key=key)
    jax.block_until_ready(jax.tree.leaves(factors.layers))
    fit_first = time.perf_counter() - start
    start = time.perf_counter()
    factors = kfac.fit(fn, params, train_data, fisher="true", key=jax.random.fold_in(key, 1))
    jax.block_until_ready(jax.tree.leaves(factors.layers))
    fit_warm = time.perf_counter() - start
    estimators = {}
    for kind in ("ekfac", "kfac"):
        est = influence.make(kind, fn, params, train_data, factors=factors)
        start = time.perf_counter()
        scores = np.asarray(est.scores(test_data))
        first = time.perf_counter() - start
        est2 = influence.make(kind, fn, params, train_data, factors=factors)
        start = time.perf_counter()
        np.asarray(est2.scores(test_data))
        warm = time.perf_counter() - start
        estimators[kind] = (est, scores)
        rows[f"{kind}_query_first_s"], rows[f"{kind}_query_warm_s"] = first, warm
    ggn_factors = kfac.fit(fn, params, train_data, fisher="ggn")
    ggn_est = influence.make("ekfac", fn, params, train_data, factors=ggn_factors)
    estimators["ekfac_ggn"] = (ggn_est, np.asarray(ggn_est.scores(test_data)))
    many = kfac.fit(fn, params, train_data, fisher="true", key=jax.random.fold_in(key, 2), num_samples=16)
    many_est = influence.make("ekfac", fn, params, train_data, factors=many)
    estimators["ekfac_true16"] = (many_est, np.asarray(many_est.scores(test_data)))
    emp_factors = kfac.fit(fn, params, train_data, fisher="empirical")
    emp_est = influence.make("ekfac", fn, params, train_data, factors=emp_factors)
    estimators["ekfac_empirical"] = (emp_est, np.asarray(emp_est.scores(test_data)))

    # dense references
    ggn = np.asarray(curvature.operator(fn, params, train_data, "ggn", l2=0.0).dense())
    ggn = 0.5 * (ggn + ggn.T)
    layers = factors.coverage.layers
    masks = layer_masks(fn, layers)
    dampings = estimators["ekfac"][0].info["damping"]
    data_loss = mean_loss(fn.per_example_loss_fn)
    train_grads = np.asarray(flat_per_example_grads(data_loss, params, train_data))
    test_grads = np.asarray(flat_per_example_grads(data_loss, params, test_data))
    block, block_layers = block_inverse_scores(ggn, masks, dampings, fn.l2, train_grads, test_grads)
    mean_damping = float(np.mean(list(dampings.values())))
    full_ggn = np.linalg.solve(ggn + (mean_damping + fn.l2) * np.eye(ggn.shape[0]), test_grads.T).T @ train_grads.T
    choice = influence.damping_above_min_eigenvalue(fn, params, train_data, margin=0.01)
    start = time.perf_counter()
    exact = np.asarray(influence.make("exact", fn, params, train_data, damping=choice.damping,
                                      hessian=choice.eigen).scores(test_data))
    rows["exact_query_s"] = time.perf_counter() - start

    def rho(a, b):
        return float(np.mean(spearman_rows(a, b)))

    for name, (_, scores) in estimators.items():
        rows[f"{name}_vs_block"] = rho(scores, block)
        rows[f"{name}_vs_exact"] = rho(scores, exact)
        rows[f"{name}_vs_ggn"] = rho(scores, full_ggn)
    rows["block_vs_exact"] = rho(block, exact)
    rows["block_vs_ggn"] = rho(block, full_ggn)
    rows["ggn_vs_exact"] = rho(full_ggn, exact)

    # per layer: EK-FAC / K-FAC restricted to one layer against that layer's exact block
    unravel = jax.vmap(ravel_pytree(params)[1])
    train_trees, test_trees = unravel(jnp.asarray(train_grads)), unravel(jnp.asarray(test_grads))
    for kind in ("ekfac", "kfac"):
        pre = kfac.preconditioner(factors, kind, None, fn.l2)
        for layer in layers:
            g_train = np.asarray(kfac.layer_matrix(layer, train_trees))
            g_test = kfac.layer_matrix(layer, test_trees)
            solved = np.asarray(kfac.inverse_hvp(pre, {layer.name: g_test})[layer.name])
            layer_scores = solved.reshape(len(solved), -1) @ g_train.reshape(len(g_train), -1).T
            rows[f"{kind}_layer_{layer.name}_vs_block"] = rho(layer_scores, block_layers[layer.name])
    for layer in layers:
        rows[f"damping_{layer.name}"] = dampings[layer.name]

    # where the factorisation loses, free of label noise: the exact-GGN factors per layer (relative
    # Frobenius error of the approximate block, and the layer's ranking) and over the damping
    ggn_block = {}
    for layer in layers:
        idx = np.flatnonzero(masks[layer.name])
        units = np.zeros((len(idx), ggn.shape[0]))
        units[np.arange(len(idx)), idx] = 1.0
        to_layer = np.asarray(kfac.layer_matrix(layer, unravel(jnp.asarray(units)))).reshape(len(idx), -1)
        ggn_block[layer.name] = to_layer.T @ ggn[np.ix_(idx, idx)] @ to_layer  # in the layer's [d_a, d_out] order
        lf = ggn_factors.layers[layer.name]
        basis = np.kron(np.asarray(lf.activation_vectors), np.asarray(lf.gradient_vectors))
        approx = {"kfac": np.kron(np.asarray(lf.activation), np.asarray(lf.gradient)),
                  "ekfac": basis @ np.diag(np.ravel(np.asarray(lf.corrected))) @ basis.T}
        for kind, matrix in approx.items():
            rows[f"{kind}_ggn_layer_{layer.name}_frobenius_error"] = float(
                np.linalg.norm(matrix - ggn_block[layer.name]) / np.linalg.norm(ggn_block[layer.name]))
    for damping in (None, 1e-2, 1e-1):
        pre = kfac.preconditioner(ggn_factors, "ekfac", damping, fn.l2)
        total_approx, total_block = 0.0, 0.0
        for layer in layers:
            g_train = np.asarray(kfac.layer_matrix(layer, train_trees)).reshape(n_train, -1)
            g_test = kfac.layer_matrix(layer, test_trees)
            solved = np.asarray(kfac.inverse_hvp(pre, {layer.name: g_test})[layer.name]).reshape(len(g_test), -1)
            layer_scores = solved @ g_train.T
            exact_block = ggn_block[layer.name] + (pre.damping[layer.name] + fn.l2) * np.eye(g_train.shape[1])
            block_scores = np.linalg.solve(exact_block, np.asarray(g_test).reshape(len(g_test), -1).T).T @ g_train.T
            total_approx, total_block = total_approx + layer_scores, total_block + block_scores
            label = "heuristic" if damping is None else f"{damping:g}"
            rows[f"ekfac_ggn_layer_{layer.name}_vs_block_damping_{label}"] = rho(layer_scores, block_scores)
        rows[f"ekfac_ggn_vs_block_damping_{label}"] = rho(total_approx, total_block)
    rows.update(seed=seed, train_loss=loss, test_accuracy=accuracy, damping_exact=choice.damping,
                lambda_min=choice.lambda_min, fit_first_s=fit_first, fit_warm_s=fit_warm)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_train, n_test, num_steps, seeds = (200, 4, 1000, [0, 1]) if args.quick else (500, 8, 3000, [0, 1, 2])
    runs = [run(seed, n_train, n_test, num_steps) for seed in seeds]
    keys = [k for k in runs[0] if k != "seed"]
    summary = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    spread = {k: float(np.std([r[k] for r in runs])) for k in keys}
    out = {"n_train": n_train, "n_test": n_test, "num_steps": num_steps, "seeds": seeds, "runs": runs,
           "mean": summary, "std": spread, "machine": platform.processor() or platform.machine(),
           "jax": jax.__version__}
    suffix = "_quick" if args.quick else ""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"kfac{suffix}.json").write_text(json.dumps(out, indent=1))
    lines = [f"# K-FAC / EK-FAC on a digits MLP (64-32-10, {n_train} training examples, {n_test} test points x "
             f"{len(seeds)} seeds)", "", "| quantity | mean | std |", "| --- | --- | --- |"]
    lines += [f"| {k} | {summary[k]:.4g} | {spread[k]:.2g} |" for k in keys]
    (RESULTS / f"kfac{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
