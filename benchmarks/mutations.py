"""Mutation testing of the numerical core: a recorded list of realistic mutations, each applied
alone to a temporary copy of the repository, with the tests meant to catch it.

Each mutation is a small, plausible bug (a sign flip, an off-by-one, a wrong axis, a missing
normalisation or damping term, a dropped reorthogonalisation, an omitted transpose) written as
the exact source text it replaces. For every mutation the script copies the original text's
file, swaps in the mutated text, runs that mutation's pytest selection with a timeout, and
puts the file back (in a `finally`): the working tree is never touched, only copies of it in a
temporary folder. Outcomes:

- killed: the selection failed (a test failed, or the mutated package no longer imports);
- survived: the selection passed with the mutation in place;
- error: the original text was not found exactly once, the mutated file is not valid Python,
  or pytest collected nothing or crashed; errors are counted apart and stay out of the score.

score = killed / (killed + survived). A survivor is either a missing test or an equivalent
mutation (no observable behaviour changes); `equivalent` records the reason for the latter,
and the score without them is reported next to the raw score.

Before any mutation runs, every distinct selection is run once on the unmutated copy: the
script refuses to go on when one fails (a failing baseline would count every mutation killed).

    make mutate                       # all mutations, results in benchmarks/results/mutations.{json,md}
    python benchmarks/mutations.py --only trak.ensemble_not_averaged,ssd.selects_against_retain
    python benchmarks/mutations.py --jobs 2 --out /tmp/mutations   # /tmp/mutations.{json,md}
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# ----------------------------------------------------------------------------- test selections
# Targeted and fast (seconds each, after ~5 s of interpreter and JAX start-up): the tests whose
# job is the mutated function, never the whole suite.

# A selection is a list of (test file, -k expression or None) pairs, run as one pytest call.
# the invariants files hold the tests written to kill the first run's survivors
INVARIANTS_CURVATURE = [("tests/test_invariants_curvature.py", None)]
CURVATURE = [("tests/test_curvature.py", "not four_devices")] + INVARIANTS_CURVATURE
CURVATURE_PRODUCTS = [("tests/test_curvature.py", "ggn_and_fisher or short_last_batch")]
CORE_CHUNKS = [("tests/test_core.py", "map_chunks or sum_chunks or sharded_sum")] + INVARIANTS_CURVATURE
INVARIANTS_SPECTRUM = [("tests/test_invariants_spectrum.py", None)]
SPECTRUM = [("tests/test_spectrum.py", "not compile_size and not memory")] + INVARIANTS_SPECTRUM
NOT_SYMMETRIC = [("tests/test_spectrum_compile.py", "residuals_show_an_operator_that_is_not_symmetric")]
SLQ = [("tests/test_spectrum_density.py", "slq")]
DENSITY = [("tests/test_spectrum_density.py", None)] + INVARIANTS_SPECTRUM
INVARIANTS_DAMPING = [("tests/test_invariants_influence.py", "damping_enters")]
INFLUENCE_EXACT = [("tests/test_influence.py", "exact_matches_dense_solve or self_influence or proponents")]
INFLUENCE_CURVATURE_FREE = [("tests/test_influence.py", "tracin or grad_cos or self_influence")]
ATTRIBUTION_DAMPING = [("tests/test_influence_problems.py", "train_for_attribution")]
ITERATIVE_CG = [("tests/test_influence_iterative.py", "cg_matches_exact or indefinite")]
ITERATIVE_LISSA = [("tests/test_influence_iterative.py", "lissa")]
ITERATIVE_ARNOLDI = [("tests/test_influence_iterative.py", "arnoldi_matches_exact or flat_tail")] + INVARIANTS_DAMPING
TRAK = [("tests/test_influence_trak.py", None), ("tests/test_invariants_influence.py", "trak")]
KFAC = [("tests/test_kfac.py", None)]
LOGRA = [("tests/test_logra.py", None)]
LOGRA_ESTIMATOR = [("tests/test_logra.py", "full_dimension or random_projection")]
LOGRA_MEASURE = [("tests/test_logra.py", "transformer_and_measure")]
SSD = [("tests/test_unlearning.py", "ssd or fisher_diagonal"), ("tests/test_invariants_unlearning.py", None)]
SCHEDULE_BOUNDS = [("tests/test_schedules.py", "bound")]
SCHEDULE_REFINE = [("tests/test_schedules.py", "refine")]
STATISTICS = [("tests/test_influence_evaluate.py", "auc or correlations"),
              ("tests/test_influence.py", "lds_auc_and_rank_metrics"),
              ("tests/test_unlearning.py", "auc_matches_pairwise_count")]
OWLQN = [("tests/test_distributed.py", "owlqn or pseudo_gradient"), ("tests/test_invariants_minimize.py", None)]
CONVEX_RUNNER = [("tests/test_convex.py", "runner_matches_python_reference or vmapped_runner")]
SKETCH_DENSE = [("tests/test_sketch.py", "dense")]
SKETCH_FWHT = [("tests/test_sketch.py", "fwht or fjl")]


def pytest_args(selection) -> list[str]:
    """The pytest arguments of a selection: its files, and one -k expression that scopes each
    file's expression to that file (a test module's name is one of its tests' keywords).

    Args:
        selection: a list of (test file, -k expression or None) pairs.

    Returns:
        The argument list, e.g. ["tests/a.py", "tests/b.py", "-k", "(a.py and (x)) or (b.py)"].
    """
    files = list(dict.fromkeys(path for path, _ in selection))
    if len(selection) == 1:
        k = selection[0][1]
        return files + (["-k", k] if k else [])
    terms = [f"({Path(path).name} and ({k}))" if k else f"({Path(path).name})" for path, k in selection]
    return files + ["-k", " or ".join(terms)]


# ----------------------------------------------------------------------------- the mutations


def mutation(id, file, original, mutated, description, tests, equivalent=None):
    """One recorded mutation.

    Args:
        id: a short unique name, "area.what_goes_wrong".
        file: the mutated file, relative to the repository root.
        original: the exact source text replaced (must occur exactly once in `file`).
        mutated: the text put in its place.
        description: one line saying what the bug is.
        tests: the selection meant to catch it, (test file, -k expression or None) pairs.
        equivalent: None, or why the mutation cannot change any observable behaviour.

    Returns:
        The mutation as a dict.
    """
    return {"id": id, "file": file, "original": original, "mutated": mutated,
            "description": description, "tests": [list(part) for part in tests], "equivalent": equivalent}


STORE = [("tests/test_sketch_store.py", "refused or non_finite or never_written")]
BOUNDARY_SPECTRUM = [("tests/test_spectrum.py", "spurious or never_the_start or multiple_of_the_identity"),
                     ("tests/test_spectrum_compile.py", "not_symmetric"),
                     ("tests/test_spectrum_sharpness.py", None)]
LISSA_DIVERGED = [("tests/test_influence_iterative.py", "lissa"), ("tests/test_influence_errors.py", None)]
STATISTICS_BOUNDARY = [("tests/test_boundary.py", "correlations or auc")]

MUTATIONS = [
    # this round's checks (issue 27): each guards a silent wrong number
    mutation("krylov.restart_seed_from_key_sum", "workbench/spectrum/krylov.py",
             "key = jnp.append(words, jnp.uint32(_RESTART_STREAM))  # no RNG compile",
             "key = jnp.sum(words % (1 << 16)).astype(jnp.uint32)[None]",
             "breakdown restarts seeded by the key words' sum (key(0) restarts with the start vector itself)",
             BOUNDARY_SPECTRUM),
    mutation("eigensolver.unconverged_returned_silently", "workbench/spectrum/eigensolver.py",
             'if unconverged == "return" or converged.all():',
             "if True:",
             "top_eigenpairs returns unconverged pairs without raising or warning",
             BOUNDARY_SPECTRUM),
    mutation("sharpness.unconverged_returned_silently", "workbench/spectrum/sharpness.py",
             "    if not np.all(np.asarray(converged)):\n        raise RuntimeError(_unconverged_message(\"sharpness\"",
             "    if False:\n        raise RuntimeError(_unconverged_message(\"sharpness\"",
             "sharpness returns eigenvalues that did not converge",
             [("tests/test_boundary.py", "sharpness")]),
    mutation("lissa.divergence_unflagged", "workbench/influence/iterative.py",
             "diverged = ~(residual <= bound) & jnp.all(jnp.isfinite(b))",
             "diverged = jnp.zeros((), bool)",
             "a diverged LiSSA series returns its huge partial sum as scores",
             LISSA_DIVERGED),
    mutation("store.params_values_unchecked", "workbench/sketch/provenance.py",
             '    elif differs("params_values"):',
             "    elif False:",
             "a store reopened at other param values serves its old sketches",
             STORE),
    mutation("store.non_finite_chunk_written", "workbench/sketch/store.py",
             "    if bad.size == 0:\n        return",
             "    if True:\n        return",
             "a chunk of NaN gradients is written and committed",
             STORE),
    mutation("statistics.constant_correlation_returned", "workbench/core/statistics.py",
             "        if values.size and np.all(values == values.ravel()[0]):",
             "        if False:",
             "the correlation with a constant comes back as NaN instead of an error",
             STATISTICS_BOUNDARY),
    # --- curvature products and the dataset-averaged operator
    mutation("curvature.fisher_not_batch_mean", "workbench/curvature/products.py",
             "return optax.tree.scale(jnp.asarray(1.0 / n, losses.dtype), vjp(jv)[0])",
             "return vjp(jv)[0]",
             "empirical Fisher product summed over the batch instead of averaged (missing 1/B)",
             CURVATURE_PRODUCTS),
    mutation("curvature.ggn_output_hessian_dropped", "workbench/curvature/products.py",
             "hjv = jax.jvp(jax.grad(mean_loss), (outputs,), (jv,))[1]",
             "hjv = jv",
             "Gauss-Newton product J^T J v: the Hessian of the loss in the outputs is left out",
             CURVATURE_PRODUCTS),
    mutation("curvature.ggn_l2_dropped", "workbench/curvature/products.py",
             "return optax.tree.add_scale(out, l2, v) if l2 else out",
             "return out",
             "GGN product drops its l2 I damping term",
             CURVATURE_PRODUCTS),
    mutation("curvature.fisher_operator_l2_dropped", "workbench/curvature/averaged.py",
             "return optax.tree.add_scale(out, l2, _cast_like(v, sub)) if l2 else out",
             "return out",
             "dataset Fisher operator drops its l2 I term",
             CURVATURE_PRODUCTS),
    mutation("curvature.short_chunk_weighted_as_full", "workbench/curvature/averaged.py",
             "return flat * jnp.asarray(num_examples(chunk), acc_dtype)",
             "return flat * jnp.asarray(chunk_size, acc_dtype)",
             "every chunk weighted as a full chunk, so a short last batch is over-weighted",
             CURVATURE_PRODUCTS),
    mutation("curvature.mean_over_n_minus_one", "workbench/curvature/averaged.py",
             "return (total / jnp.asarray(n, acc_dtype)).astype(dtype)",
             "return (total / jnp.asarray(n - 1, acc_dtype)).astype(dtype)",
             "dataset average divided by n - 1 instead of n (off by one)",
             CURVATURE),
    mutation("curvature.accumulate_dtype_ignored", "workbench/curvature/averaged.py",
             "acc_dtype = jnp.dtype(accumulate_dtype or dtype)",
             "acc_dtype = jnp.dtype(dtype)",
             "accumulate_dtype ignored: the batch sum accumulates in the params' dtype",
             CURVATURE),
    mutation("curvature.dense_transpose_omitted", "workbench/curvature/linear.py",
             "return self.matmat(eye).T",
             "return self.matmat(eye)",
             "LinearOperator.dense returns A^T (rows of products instead of columns)",
             CURVATURE + NOT_SYMMETRIC),
    mutation("core.sum_chunks_single_row_tail_dropped", "workbench/core/per_example.py",
             "    if tail:\n        part = fn(",
             "    if tail > 1:\n        part = fn(",
             "sum_chunks drops a remainder of exactly one row (off by one in the tail test)",
             CORE_CHUNKS + [("tests/test_curvature.py", "short_last_batch")]),
    mutation("core.map_chunks_keeps_padding_rows", "workbench/core/per_example.py",
             "return jax.tree.map(lambda o: o.reshape(num_chunks * chunk_size, *o.shape[2:])[:n], out)",
             "return jax.tree.map(lambda o: o.reshape(num_chunks * chunk_size, *o.shape[2:])[-n:], out)",
             "map_chunks keeps the last n rows (padding included) instead of the first n",
             CORE_CHUNKS),
    # --- Krylov factorizations, eigensolver, SLQ density and traces
    mutation("krylov.reorthogonalisation_dropped", "workbench/spectrum/krylov.py",
             "    h2 = basis @ w\n    return w - h2 @ basis, h1 + h2",
             "    h2 = basis @ w\n    return w, h1",
             "one pass of classical Gram-Schmidt: the second (reorthogonalisation) pass is dropped",
             SPECTRUM),
    mutation("krylov.three_term_uses_current_vector", "workbench/spectrum/krylov.py",
             "w = w - beta_prev * v_prev",
             "w = w - beta_prev * v",
             "plain Lanczos subtracts beta times the current vector instead of the previous one",
             SPECTRUM + SLQ),
    mutation("krylov.power_value_is_norm", "workbench/spectrum/krylov.py",
             "value = jnp.vdot(x, ax)",
             "value = jnp.linalg.norm(ax)",
             "power iteration reports |lambda| (the norm of A x), losing a negative eigenvalue's sign",
             SPECTRUM),
    mutation("krylov.ritz_residual_first_component", "workbench/spectrum/krylov.py",
             "jnp.abs(hess[m, m - 1]) * jnp.abs(s[m - 1, idx])",
             "jnp.abs(hess[m, m - 1]) * jnp.abs(s[0, idx])",
             "Ritz residual read off the first component of the eigenvector instead of the last",
             SPECTRUM + [("tests/test_influence_iterative.py", "arnoldi")]),
    mutation("krylov.tridiagonal_offdiagonal_shifted", "workbench/spectrum/krylov.py",
             "off = betas[: m - 1]",
             "off = betas[1:m]",
             "tridiagonal built from the off-diagonal shifted by one (betas[1:m])",
             SPECTRUM + SLQ),
    mutation("eigensolver.restart_coupling_dropped", "workbench/spectrum/eigensolver.py",
             "return new_basis, new_hess.at[keep].set(hess[m] @ sk)",
             "return new_basis, new_hess",
             "thick restart forgets the coupling row between the kept Ritz vectors and the residual",
             SPECTRUM),
    mutation("eigensolver.arnoldi_largest_ascending", "workbench/spectrum/eigensolver.py",
             "return np.arange(m - count, m)[::-1]",
             "return np.arange(m - count, m)",
             "method='arnoldi' returns the largest eigenvalues in ascending, not descending, order",
             SPECTRUM),
    mutation("eigensolver.relation_residual_sign", "workbench/spectrum/eigensolver.py",
             "return xp.linalg.norm(hess @ s - shifted, axis=0)",
             "return xp.linalg.norm(hess @ s + shifted, axis=0)",
             "residual ||H s - theta s|| computed with the wrong sign (H s + theta s)",
             SPECTRUM + NOT_SYMMETRIC),
    mutation("eigensolver.arnoldi_basis_offset", "workbench/spectrum/eigensolver.py",
             "vectors = s[:, idx].T @ basis[:m]",
             "vectors = s[:, idx].T @ basis[1:]",
             "Arnoldi Ritz vectors combine the basis shifted by one vector",
             SPECTRUM),
    mutation("density.slq_weights_wrong_axis", "workbench/spectrum/density.py",
             "return nodes, vecs[0] ** 2, finite",
             "return nodes, vecs[:, 0] ** 2, finite",
             "SLQ weights from the first eigenvector instead of the first components of all of them",
             DENSITY),
    mutation("density.probe_mean_missing", "workbench/spectrum/density.py",
             'return jnp.einsum("pi,pig->g", weights, gauss) / nodes.shape[0]',
             'return jnp.einsum("pi,pig->g", weights, gauss)',
             "broadened density summed over probes instead of averaged",
             DENSITY,
             equivalent="every caller (spectral_density, broaden) renormalises the density to "
                        "integrate to 1 right after, so the constant factor 1/num_probes cancels"),
    mutation("density.kernel_width_not_scaled", "workbench/spectrum/density.py",
             "var = sigma2 * jnp.maximum(1.0, hi - lo)",
             "var = sigma2",
             "Gaussian kernel variance not scaled by the spectral range (documented: sigma2 * max(1, range))",
             DENSITY),
    mutation("density.hutchinson_wrong_axis", "workbench/spectrum/density.py",
             "return jnp.sum(z * _map_rows(op.mv, z, batch), axis=1), jnp.zeros((), op.dtype)",
             "return jnp.sum(z * _map_rows(op.mv, z, batch), axis=0), jnp.zeros((), op.dtype)",
             "Hutchinson samples z^T A z summed over the wrong axis (over probes, per coordinate)",
             DENSITY),
    mutation("density.hutchpp_not_deflated", "workbench/spectrum/density.py",
             "z = z - (z @ q) @ q.T",
             "z = z",
             "Hutch++ probes not projected off the sketched subspace (its trace counted twice)",
             DENSITY),
    mutation("density.xtrace_correction_sign", "workbench/spectrum/density.py",
             "- 2 * jnp.vdot(u, r[:, i])",
             "+ 2 * jnp.vdot(u, r[:, i])",
             "XTrace's leave-one-out correction with a sign flip",
             DENSITY),
    mutation("density.std_error_not_over_sqrt_n", "workbench/spectrum/density.py",
             "samples.std(ddof=1) / np.sqrt(samples.shape[0])",
             "samples.std(ddof=1)",
             "trace standard error reported as the sample spread (missing 1/sqrt(n))",
             DENSITY),
    # --- influence estimators
    mutation("influence.exact_eigen_damping_dropped", "workbench/influence/inverse.py",
             '"inverse": (evecs / (evals + damping)) @ evecs.T',
             '"inverse": (evecs / evals) @ evecs.T',
             "exact influence from a given eigendecomposition ignores the damping",
             INFLUENCE_EXACT + ATTRIBUTION_DAMPING + INVARIANTS_DAMPING),
    mutation("influence.exact_cholesky_damping_dropped", "workbench/influence/inverse.py",
             "return jnp.linalg.cholesky(hessian + damping * jnp.eye(hessian.shape[0], dtype=hessian.dtype))",
             "return jnp.linalg.cholesky(hessian)",
             "exact influence factors H instead of H + damping I",
             INFLUENCE_EXACT + ITERATIVE_CG),
    mutation("influence.cg_damping_dropped", "workbench/influence/iterative.py",
             "mv = lambda v: op.mv(v) + damping * v",
             "mv = lambda v: op.mv(v)",
             "CG solves C x = g instead of (C + damping I) x = g",
             ITERATIVE_CG),
    mutation("influence.cg_residual_sign", "workbench/influence/iterative.py",
             "x, r = x + alpha * d, r - alpha * ad",
             "x, r = x + alpha * d, r + alpha * ad",
             "CG residual updated with the wrong sign",
             ITERATIVE_CG),
    mutation("influence.lissa_not_rescaled", "workbench/influence/iterative.py",
             "return jnp.where(diverged, jnp.inf, x / scale)",
             "return jnp.where(diverged, jnp.inf, x)",
             "LiSSA's Neumann sum not divided by the scale",
             ITERATIVE_LISSA),
    mutation("influence.arnoldi_damping_dropped", "workbench/influence/arnoldi.py",
             "values = eig_values + damping",
             "values = eig_values",
             "Arnoldi influence inverts the top eigenvalues without the damping",
             ITERATIVE_ARNOLDI),
    mutation("influence.arnoldi_tail_counted_twice", "workbench/influence/arnoldi.py",
             'state["inverse_values"] = inverse_values - jnp.where(keep, 1.0 / tail_value, 0.0)',
             'state["inverse_values"] = inverse_values',
             "flat tail added on top of the kept eigendirections (1/c counted twice there)",
             ITERATIVE_ARNOLDI),
    mutation("trak.ensemble_not_averaged", "workbench/influence/trak.py",
             ".reshape(features.shape[0], -1) / num_models",
             ".reshape(features.shape[0], -1)",
             "TRAK ensemble summed over its M models instead of averaged (scores times M)",
             TRAK),
    mutation("trak.default_damping_not_per_dimension", "workbench/influence/trak.py",
             "lam = 0.1 * np.trace(gram) / dim if damping is None else float(damping)",
             "lam = 0.1 * np.trace(gram) if damping is None else float(damping)",
             "TRAK's default damping is 0.1 x the trace instead of 0.1 x the mean eigenvalue",
             TRAK),
    mutation("tracin.rates_not_square_rooted", "workbench/influence/gradient.py",
             '"root_rates": jnp.asarray(np.sqrt(np.asarray(rates, stacked.dtype)))',
             '"root_rates": jnp.asarray(np.asarray(rates, stacked.dtype))',
             "TracIn features scaled by lr instead of sqrt(lr): scores weighted by lr^2",
             INFLUENCE_CURVATURE_FREE),
    mutation("grad_cos.normalised_over_examples", "workbench/influence/estimator.py",
             "g = g / (jnp.linalg.norm(g, axis=1, keepdims=True) + 1e-12)",
             "g = g / (jnp.linalg.norm(g, axis=0, keepdims=True) + 1e-12)",
             "gradient cosine normalises each parameter over the examples (wrong axis)",
             INFLUENCE_CURVATURE_FREE),
    mutation("estimator.opponent_scores_sign", "workbench/influence/estimator.py",
             "return Ranked(ranked.indices, -ranked.scores)",
             "return Ranked(ranked.indices, ranked.scores)",
             "opponents reported with their scores negated",
             INFLUENCE_EXACT),
    # --- unlearning
    mutation("ssd.selects_against_retain", "workbench/unlearning/ssd.py",
             "sel = jax.tree.map(lambda ff, fd: ff > alpha * fd, f_forget, f_full)",
             "sel = jax.tree.map(lambda ff, fd: ff > alpha * fd, f_forget, f_retain)",
             "SSD selects weights with F_forget > alpha F_retain instead of alpha F_full",
             SSD),
    mutation("ssd.dampening_not_capped", "workbench/unlearning/ssd.py",
             "jnp.minimum(lam * fd / jnp.where(ff > 0, ff, 1), 1)",
             "lam * fd / jnp.where(ff > 0, ff, 1)",
             "SSD's dampening factor min(lam F_D / F_f, 1) loses its cap at 1 (can amplify)",
             SSD),
    mutation("ssd.fisher_counts_a_padding_row", "workbench/unlearning/ssd.py",
             "weights = (jnp.arange(chunks * c) < n)",
             "weights = (jnp.arange(chunks * c) <= n)",
             "Fisher diagonal counts one padding row (off by one in the chunk mask)",
             SSD),
    # --- schedules and bounds
    mutation("bounds.tail_sum_shifted", "workbench/schedules/bounds.py",
             "extra = 0.5 * np.sum(eta[k] / (tail[1:] * tail[k]) * q[k])",
             "extra = 0.5 * np.sum(eta[k] / (tail[1:] * tail[k]) * q[1:])",
             "last-iterate bound sums Q_{k+1} instead of Q_k (off by one)",
             SCHEDULE_BOUNDS),
    mutation("bounds.optimal_scale_inverted", "workbench/schedules/bounds.py",
             "return 2.0 * math.sqrt(a * b), math.sqrt(a / b)",
             "return 2.0 * math.sqrt(a * b), math.sqrt(b / a)",
             "the reported optimal scale is 1/c* (the bound value itself unchanged)",
             SCHEDULE_BOUNDS),
    mutation("refine.weights_include_current_step", "workbench/schedules/refinement.py",
             "eta = w * (tail - w)",
             "eta = w * tail",
             "refined schedule eta_t = w_t sum_{p >= t} w_p instead of sum_{p > t}",
             SCHEDULE_REFINE),
    # --- statistics
    mutation("statistics.auc_rank_offset", "workbench/core/statistics.py",
             "n_pos * (n_pos + 1) / 2",
             "n_pos * (n_pos - 1) / 2",
             "Mann-Whitney AUC subtracts n_pos (n_pos - 1) / 2 (off by one)",
             STATISTICS),
    mutation("statistics.pearson_centres_columns", "workbench/core/statistics.py",
             "b = b - b.mean(axis=1, keepdims=True)",
             "b = b - b.mean(axis=0, keepdims=True)",
             "pearson_rows centres b over the rows (wrong axis)",
             STATISTICS),
    # --- OWL-QN and convex SGD
    mutation("owlqn.direction_not_projected", "workbench/distributed/minimize.py",
             "        d = jax.tree.map(lambda di, pgi: jnp.where(di * pgi < 0, di, jnp.zeros_like(di)), d, pg)\n",
             "",
             "OWL-QN's quasi-Newton direction is not projected onto the descent orthant of -pg",
             OWLQN),
    mutation("owlqn.pseudo_gradient_sign", "workbench/distributed/minimize.py",
             "return jnp.where(x != 0, g + l1 * jnp.sign(x), at_zero)",
             "return jnp.where(x != 0, g - l1 * jnp.sign(x), at_zero)",
             "pseudo-gradient of the L1 term with the wrong sign away from zero",
             OWLQN),
    mutation("owlqn.two_loop_second_sign", "workbench/distributed/minimize.py",
             "step = jnp.where(j < count, alphas[i] - beta, 0.0)",
             "step = jnp.where(j < count, beta - alphas[i], 0.0)",
             "L-BFGS two-loop recursion with a sign flip in the second loop",
             OWLQN),
    mutation("owlqn.two_loop_slot_order", "workbench/distributed/minimize.py",
             "i = (newest - (jnp.minimum(count, memory_size) - 1) + j) % memory_size",
             "i = (newest - (count - 1) + j) % memory_size",
             "two-loop recursion's second loop in slot order once the ring buffer wrapped (the bug "
             "test_invariants_minimize found, re-injected)",
             OWLQN),
    mutation("convex.suffix_average_over_record", "workbench/convex/runner.py",
             "suffix = (sums[pos] - start_sums) / jnp.asarray(lengths, dtype)[:, None]",
             "suffix = (sums[pos] - start_sums) / jnp.asarray(record, dtype)[:, None]",
             "suffix average divided by the step count T instead of the suffix length",
             CONVEX_RUNNER),
    # --- K-FAC and EK-FAC
    mutation("kfac.inverse_activation_basis_transposed", "workbench/curvature/kfac.py",
             "rotated = v @ q_s if q_a is None else jnp.swapaxes(q_a, -1, -2) @ v @ q_s",
             "rotated = v @ q_s if q_a is None else q_a @ v @ q_s",
             "the inverse rotates into the eigenbasis with Q_A instead of Q_A^T",
             KFAC),
    mutation("kfac.ekfac_without_correction", "workbench/curvature/kfac.py",
             "        raise ValueError(\"kind='ekfac' needs the eigenvalue correction: fit with correct=True (the default)\")\n"
             "    return layer_factors.corrected",
             "        raise ValueError(\"kind='ekfac' needs the eigenvalue correction: fit with correct=True (the default)\")\n"
             "    return jnp.outer(layer_factors.activation_values, layer_factors.gradient_values)",
             "EK-FAC uses K-FAC's eigenvalues a_i s_j (the correction is fitted but never used)",
             KFAC),
    mutation("kfac.heuristic_damping_of_the_largest_eigenvalue", "workbench/curvature/kfac.py",
             "HEURISTIC_DAMPING_SCALE * float(np.mean(values))",
             "HEURISTIC_DAMPING_SCALE * float(np.max(values))",
             "the default damping is 0.1 x the largest eigenvalue, not the mean",
             KFAC),
    mutation("kfac.l2_left_out_of_the_inverse", "workbench/curvature/kfac.py",
             "shifted = values + (layer_damping + l2)",
             "shifted = values + layer_damping",
             "the objective's l2 is not added to the layer's curvature",
             KFAC),
    mutation("kfac.padded_rows_counted", "workbench/curvature/kfac.py",
             "weights = (np.arange(lo, lo + chunk_size) < n).astype(np.float64)",
             "weights = np.ones(chunk_size)",
             "the repeated rows padding the last chunk are counted as examples",
             KFAC),
    mutation("kfac.sampled_labels_summed_not_averaged", "workbench/curvature/kfac.py",
             "sample_weight = np.asarray(1.0 / num_samples, dtype)",
             "sample_weight = np.asarray(1.0, dtype)",
             "several sampled labels per example are summed, not averaged",
             KFAC),
    mutation("kfac.activation_summed_over_positions", "workbench/curvature/kfac.py",
             "per_position = weights / a.shape[1]",
             "per_position = weights",
             "A sums a a^T over a sequence's positions instead of averaging them",
             KFAC),
    mutation("kfac.capture_bias_input_zero", "workbench/curvature/capture.py",
             "a = jnp.concatenate([a, jnp.ones(a.shape[:-1] + (1,), dtype)], axis=-1)",
             "a = jnp.concatenate([a, jnp.zeros(a.shape[:-1] + (1,), dtype)], axis=-1)",
             "the bias's input is 0 instead of 1 (its gradient and factors vanish)",
             KFAC),
    mutation("kfac.capture_gradients_averaged_over_positions", "workbench/curvature/capture.py",
             "    return jnp.einsum(\"npi,npo->nio\", inputs, output_grads)",
             "    return jnp.einsum(\"npi,npo->nio\", inputs, output_grads) / inputs.shape[1]",
             "a layer's per-example gradient averages over positions instead of summing",
             KFAC),
    mutation("kfac.output_gradients_of_the_batch_mean", "workbench/curvature/fisher_labels.py",
             "return vjp(jnp.ones_like(losses))[0][None], losses",
             "return vjp(jnp.ones_like(losses) / losses.shape[0])[0][None], losses",
             "output gradients of the batch-mean loss (each example's scaled by 1/n)",
             KFAC),
    mutation("kfac.true_fisher_takes_the_most_likely_label", "workbench/curvature/fisher_labels.py",
             "return jax.vmap(lambda k, o: jax.random.categorical(k, o, axis=-1))(keys, outputs)",
             "return jax.vmap(lambda k, o: jnp.argmax(o, axis=-1))(keys, outputs)",
             "the true Fisher takes the argmax label instead of sampling the predictive distribution",
             KFAC),
    mutation("kfac.ggn_output_hessian_root_squared", "workbench/curvature/fisher_labels.py",
             "roots = vectors * jnp.sqrt(jnp.clip(values, 0.0))[:, None, :]",
             "roots = vectors * jnp.clip(values, 0.0)[:, None, :]",
             "the GGN's pseudo-gradients use H_n's eigenvalues instead of their square roots",
             KFAC),
    mutation("kfac.factor_file_written_in_place", "workbench/curvature/factor_store.py",
             "        with os.fdopen(fd, \"wb\") as file:\n            np.savez(file, **arrays)\n        os.replace(tmp, path)",
             "        os.close(fd)\n        Path(tmp).unlink()\n        with open(path, \"wb\") as file:\n"
             "            np.savez(file, **arrays)",
             "the factors file is written in place: a failed write destroys the good file",
             KFAC),
    mutation("kfac.factor_file_params_values_unchecked", "workbench/curvature/factor_store.py",
             "found = [f\"{field}: {text}\" for field, text in _DESCRIBED.items() if stored.get(field) != run.get(field)]",
             "found = [f\"{field}: {text}\" for field, text in _DESCRIBED.items()\n"
             "             if field != \"params_values\" and stored.get(field) != run.get(field)]",
             "factors fitted at other params (same structure) are accepted",
             KFAC),
    mutation("kfac.influence_without_l2", "workbench/influence/ekfac.py",
             "pre = kf.preconditioner(fitted, kind, damping, model.l2)",
             "pre = kf.preconditioner(fitted, kind, damping)",
             "the influence estimator leaves the objective's l2 out of the curvature",
             KFAC),
    # --- sketches
    mutation("sketch.dense_scaled_by_one_over_d", "workbench/sketch/kinds/dense.py",
             "rand.rademacher((d, n))) * np.float32(1.0 / np.sqrt(d))",
             "rand.rademacher((d, n))) * np.float32(1.0 / d)",
             "dense JL sketch scaled by 1/D instead of 1/sqrt(D)",
             SKETCH_DENSE),
    mutation("sketch.fwht_scaled_by_one_over_n", "workbench/sketch/kinds/hadamard.py",
             "scale = jnp.asarray(1.0 / np.sqrt(n), dtype=x.dtype)",
             "scale = jnp.asarray(1.0 / n, dtype=x.dtype)",
             "Walsh-Hadamard transform scaled by 1/N instead of 1/sqrt(N) (not orthonormal)",
             SKETCH_FWHT),
    # --- the char GPT and its corpus (tests/test_gpt.py)
    mutation("gpt.causal_mask_dropped", "workbench/gpt.py",
             "x = block(x, mask)", "x = block(x, None)",
             "GPT attends to future positions", [("tests/test_gpt.py", "depend_on_past")]),
    mutation("gpt.tokens_never_seen", "workbench/gpt.py",
             "x = self.embed(tokens) + self.pos", "x = self.embed(jnp.zeros_like(tokens)) + self.pos",
             "GPT's input embedding ignores the tokens (only positions reach the blocks)",
             [("tests/test_gpt.py", "learns_from_context")]),
    mutation("gpt.blocks_ignore_param_dtype", "workbench/gpt.py",
             "config.mlp_ratio, rngs=rngs, param_dtype=param_dtype,", "config.mlp_ratio, rngs=rngs,",
             "GPT's blocks keep float32 params when float64 is asked", [("tests/test_gpt.py", "depend_on_past")]),
    mutation("gpt.count_misses_the_head_bias", "workbench/gpt.py",
             "jax.tree.leaves(nnx.state(abstract, nnx.Param)))",
             "jax.tree.leaves(nnx.state(abstract, nnx.Param))) - config.vocab_size",
             "count_params leaves out the head's bias", [("tests/test_gpt.py", "named_sizes")]),
    mutation("gpt.generate_reads_one_position_early", "workbench/gpt.py",
             "[0, length - 1 - start]", "[0, length - 2 - start]",
             "generate draws from the logits of the second-to-last position", [("tests/test_gpt.py", "generate")]),
    mutation("gpt.generate_never_slides", "workbench/gpt.py",
             "start = jnp.maximum(length - context_len, 0)", "start = 0",
             "generate keeps reading the first context_len tokens once the sequence outgrows them",
             [("tests/test_gpt.py", "generate")]),
    mutation("corpus.validation_overlaps_training", "workbench/data.py",
             'validation_text = "".join(d[c:] for d, c in zip(documents, cuts))',
             'validation_text = "".join(d[c - seq_len:] for d, c in zip(documents, cuts))',
             "validation windows start inside the training region (a leak)", [("tests/test_gpt.py", "split_shares")]),
    mutation("corpus.targets_not_shifted", "workbench/data.py",
             "return Dataset(jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:]))",
             "return Dataset(jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, :-1]))",
             "the targets are the inputs, not the next characters", [("tests/test_gpt.py", "split_shares")]),
    mutation("corpus.encode_off_by_one", "workbench/data.py",
             "return jnp.asarray(order[where], jnp.int32)",
             "return jnp.asarray((order[where] + 1) % len(codes), jnp.int32)",
             "encode maps each character to its neighbour's id", [("tests/test_gpt.py", "round_trips")]),
    # --- LoGra
    mutation("logra.bias_row_dropped", "workbench/sketch/logra.py",
             'a_proj = p_in[a] if layer.kind == "embed" else a @ p_in',
             'a_proj = p_in[a] if layer.kind == "embed" else a[..., :-1] @ p_in[:-1]',
             "the bias row of a = [x, 1] is left out of the input projection",
             LOGRA),
    mutation("logra.positions_averaged", "workbench/sketch/logra.py",
             'jnp.einsum("npi,npo->nio", a_proj, g @ p_out)',
             'jnp.einsum("npi,npo->nio", a_proj, g @ p_out / g.shape[1])',
             "the projected gradient averages over a sequence's positions instead of summing",
             LOGRA),
    mutation("logra.block_transposed", "workbench/sketch/logra.py",
             'jnp.einsum("npi,npo->nio", a_proj, g @ p_out)',
             'jnp.einsum("npi,npo->noi", a_proj, g @ p_out)',
             "each layer's block is raveled as P_out^T G^T P_in (column-major), not the documented order",
             LOGRA),
    mutation("logra.embedding_rows_of_token_zero", "workbench/sketch/logra.py",
             "p_in[a] if",
             "p_in[jnp.zeros_like(a)] if",
             "an embedding's input projection ignores the token",
             LOGRA),
    mutation("logra.input_projection_unscaled", "workbench/sketch/logra.py",
             "(layer.activation_dim, k_in), dtype) * np.asarray(k_in ** -0.5, dtype)",
             "(layer.activation_dim, k_in), dtype)",
             "P_in is not scaled by 1/sqrt(k_in): inner products are biased by k_in",
             LOGRA),
    mutation("logra.one_key_for_every_layer", "workbench/sketch/logra.py",
             "key_in, key_out = jax.random.split(jax.random.fold_in(key, i))",
             "key_in, key_out = jax.random.split(key)",
             "every layer draws from the same key (not the documented fold_in per layer)",
             LOGRA),
    mutation("logra.damping_left_out", "workbench/sketch/logra.py",
             "np.linalg.solve(cov + damping * np.eye(cov.shape[0], dtype=cov.dtype), test.T)",
             "np.linalg.solve(cov + 1e-12 * np.eye(cov.shape[0], dtype=cov.dtype), test.T)",
             "the damping is not added to the projected covariance",
             LOGRA),
    mutation("logra.block_diagonal_ignored", "workbench/sketch/logra.py",
             "cov = np.where(_block_mask(projection), cov, 0.0)",
             "cov = cov",
             "block_diagonal=True still inverts the whole covariance",
             LOGRA),
    # --- LoGra as an influence estimator (influence.make("logra"))
    mutation("logra_estimator.layer_order_reversed", "workbench/influence/logra_influence.py",
             'state["inverses"] = jnp.asarray(inverses.astype(dtype))',
             'state["inverses"] = jnp.asarray(inverses[::-1].astype(dtype))',
             "each layer's block is preconditioned by another layer's inverse covariance (layers in reverse order)",
             LOGRA_ESTIMATOR),
    mutation("logra_estimator.damping_dropped", "workbench/influence/logra_influence.py",
             "shift = lam + l2",
             "shift = l2",
             "the damping is not added to the projected covariance (only the objective's l2)",
             LOGRA_ESTIMATOR),
    mutation("logra_estimator.l2_left_out", "workbench/influence/logra_influence.py",
             "shift = lam + l2",
             "shift = lam",
             "the objective's l2 is left out of the damped covariance",
             LOGRA_ESTIMATOR),
    mutation("logra_estimator.heuristic_damping_of_the_whole_covariance", "workbench/influence/logra_influence.py",
             "lam = 0.1 * np.trace(block) / size",
             "lam = 0.1 * np.trace(covariance) / size",
             "damping=None takes 0.1 x the whole covariance's trace per block size, not each block's mean eigenvalue",
             LOGRA_ESTIMATOR),
    mutation("logra_estimator.covariance_not_averaged", "workbench/influence/logra_influence.py",
             "covariance = feats.astype(np.float64).T @ feats.astype(np.float64) / n",
             "covariance = feats.astype(np.float64).T @ feats.astype(np.float64)",
             "the projected covariance is the sum over the training set, not the mean",
             LOGRA_ESTIMATOR),
    mutation("logra_estimator.stored_covariance_not_averaged", "workbench/influence/logra_influence.py",
             "        covariance /= n\n",
             "",
             "with store=, the covariance read back from the store is not divided by n",
             LOGRA_ESTIMATOR),
    mutation("logra_estimator.test_side_not_preconditioned", "workbench/influence/logra_influence.py",
             'return jnp.einsum("cbs,bst->cbt", blocks, inverses).reshape(features.shape[0], -1)',
             'return blocks.reshape(features.shape[0], -1)',
             "the damped inverse covariance is never applied: raw projected-gradient dot products",
             LOGRA_ESTIMATOR),
    mutation("logra_estimator.block_diagonal_ignored", "workbench/influence/logra_influence.py",
             "num_blocks = len(projection.layers) if block_diagonal else 1",
             "num_blocks = 1",
             "block_diagonal=True (the default) inverts the whole covariance, all layers together",
             LOGRA_ESTIMATOR),
    mutation("logra_estimator.input_projection_transposed", "workbench/sketch/logra.py",
             'a_proj = p_in[a] if layer.kind == "embed" else a @ p_in',
             'a_proj = p_in[a] if layer.kind == "embed" else a @ (p_in.T if p_in.shape[0] == p_in.shape[1] else p_in)',
             "a square input projection is used transposed (the case no shape check catches)",
             LOGRA_ESTIMATOR),
    mutation("logra_estimator.measure_block_transposed", "workbench/influence/logra_influence.py",
             '"ik,nio,ol->nkl"',
             '"ik,nio,ol->nlk"',
             "a measure's projected block is raveled column-major, not in the training features' row-major order",
             LOGRA_MEASURE),
]

# ----------------------------------------------------------------------------- running


def _copy_repository(dest: Path) -> None:
    """Copy the files git knows (tracked, and untracked but not ignored) to `dest`: the working
    tree as it is, without .venv, caches or build outputs."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.is_file():  # deleted in the working tree but still in the index
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _environment(copy: Path) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(copy), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")  # no .pyc: a stale one could hide a mutation
    return env


def _key(selection) -> tuple:
    """A selection as a hashable value (mutations sharing it share one baseline run)."""
    return tuple((path, k) for path, k in selection)


def _run_pytest(python: str, copy: Path, selection, timeout: float) -> dict:
    """Run the selection's tests in `copy`, stopping at the first failure; returns rc (None on
    timeout), seconds and the failed test ids."""
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *pytest_args(selection)]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=copy, env=_environment(copy), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
        rc = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the pytest we started and its children
        output, _ = process.communicate()
        rc = None
    text = output.decode(errors="replace")
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    return {"rc": rc, "seconds": round(time.perf_counter() - start, 1), "failed": failed,
            "tail": text[-3000:]}


def _check_text(m: dict, source: str) -> str | None:
    """Why the mutation cannot be applied to `source`, or None."""
    count = source.count(m["original"])
    if count != 1:
        return f"original text found {count} times in {m['file']} (expected exactly once)"
    try:
        ast.parse(source.replace(m["original"], m["mutated"]))
    except SyntaxError as err:
        return f"the mutated file is not valid Python: {err}"
    return None


def _run_mutation(m: dict, python: str, copy: Path, timeout: float) -> dict:
    """Apply `m` in `copy`, run its tests, restore the file; returns the outcome record."""
    path = copy / m["file"]
    record = {key: m[key] for key in ("id", "file", "description", "tests", "equivalent")}
    if not path.is_file():
        return {**record, "outcome": "error", "detail": f"{m['file']} does not exist", "seconds": 0.0}
    source = path.read_text()
    problem = _check_text(m, source)
    if problem:
        return {**record, "outcome": "error", "detail": problem, "seconds": 0.0}
    try:
        path.write_text(source.replace(m["original"], m["mutated"]))
        run = _run_pytest(python, copy, m["tests"], timeout)
    finally:
        path.write_text(source)
    rc = run["rc"]
    if rc is None:
        outcome, detail = "killed", f"timeout after {timeout:.0f} s"
    elif rc == 0:
        outcome, detail = "survived", "all selected tests passed"
    elif rc in (1, 2):  # 1: a test failed; 2: collection failed (the mutated package does not import)
        outcome = "killed"
        detail = ", ".join(run["failed"][:3]) or "collection failed: " + run["tail"].strip().splitlines()[-1]
    else:  # 3 internal error, 4 usage error, 5 nothing collected: the selection is broken
        outcome, detail = "error", f"pytest exit code {rc}: " + run["tail"].strip().splitlines()[-1]
    return {**record, "outcome": outcome, "detail": detail, "seconds": run["seconds"]}


def _baselines(selections: list[tuple], python: str, copies: queue.Queue, jobs: int) -> dict:
    """Run every distinct selection unmutated; returns {selection: result}."""

    def one(selection):
        copy = copies.get()
        try:
            return selection, _run_pytest(python, copy, selection, timeout=900)
        finally:
            copies.put(copy)

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return dict(pool.map(one, selections))


def _summary(results: list[dict]) -> dict:
    killed = sum(r["outcome"] == "killed" for r in results)
    survived = [r for r in results if r["outcome"] == "survived"]
    equivalent = sum(bool(r["equivalent"]) for r in survived)
    errors = sum(r["outcome"] == "error" for r in results)
    score = killed / (killed + len(survived)) if killed + len(survived) else float("nan")
    real = killed + len(survived) - equivalent
    return {"mutations": len(results), "killed": killed, "survived": len(survived),
            "survived_equivalent": equivalent, "errors": errors, "score": round(score, 4),
            "score_without_equivalent": round(killed / real, 4) if real else float("nan")}


def _write(results: list[dict], summary: dict, out: Path, meta: dict, earlier: dict | None) -> None:
    """Write OUT.json and OUT.md; `earlier` (an earlier run's JSON) adds its outcome per mutation."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "summary": summary, "results": results}, indent=1) + "\n")
    lines = [
        "# Mutation testing of the numerical core",
        "",
        f"`make mutate` (benchmarks/mutations.py): {summary['mutations']} recorded mutations, each applied "
        "alone to a copy of the repository and run against its targeted test selection. "
        f"Commit {meta['commit']}, {meta['platform']}, {meta['runtime_s']:.0f} s wall clock with "
        f"{meta['jobs']} job(s).",
        "",
        f"**Score {summary['killed']} / {summary['killed'] + summary['survived']} = {summary['score']:.3f}** "
        f"(killed / (killed + survived)); {summary['survived_equivalent']} survivor(s) are equivalent mutations "
        f"(reasons below), so {summary['score_without_equivalent']:.3f} of the non-equivalent mutations "
        f"are killed. Errors (not applied, counted apart): {summary['errors']}.",
        "",
    ]
    before = {}
    if earlier:
        before = {r["id"]: r["outcome"] for r in earlier["results"]}
        e = earlier["summary"]
        lines += [f"Earlier run ({earlier['commit']}, the `before` column): score {e['killed']} / "
                  f"{e['killed'] + e['survived']} = {e['score']:.3f}, {e['survived']} survived "
                  f"({e['survived_equivalent']} equivalent).", ""]
    lines += ["| mutation | file | what goes wrong | " + ("before | " if earlier else "") + "outcome | "
              "caught by / reason | s |",
              "|---|---|---|" + ("---|" if earlier else "") + "---|---|---:|"]
    for r in results:
        if r["outcome"] == "survived":
            why = f"equivalent: {r['equivalent']}" if r["equivalent"] else "**not caught by any selected test**"
        else:
            why = r["detail"]
        earlier_cell = f"{before.get(r['id'], 'not run')} | " if earlier else ""
        lines.append(f"| `{r['id']}` | {r['file'].removeprefix('workbench/')} | {r['description']} | "
                     f"{earlier_cell}{r['outcome']} | {why.replace('|', '/')} | {r['seconds']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    """Run the recorded mutations and write the results.

    Args:
        argv: command-line arguments (None: sys.argv[1:]).

    Returns:
        The exit status: 0 when every mutation is killed or recorded as equivalent, 1 when a
        non-equivalent mutation survived, 2 when a baseline selection fails (nothing is run).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated mutation ids to run")
    parser.add_argument("--jobs", type=int, default=1, help="mutations run in parallel (one copy each)")
    parser.add_argument("--out", default=str(RESULTS / "mutations"),
                        help="output path without suffix: writes OUT.json and OUT.md")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs pytest")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per mutation (default: 3x its selection's baseline + 60)")
    parser.add_argument("--compare", default=str(RESULTS / "mutations_before.json"),
                        help="an earlier run's JSON whose outcomes the table shows next to these "
                             "(skipped when missing or when it is the output itself)")
    parser.add_argument("--list", action="store_true", help="print the mutation ids and exit")
    args = parser.parse_args(argv)

    ids = [m["id"] for m in MUTATIONS]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate mutation ids")
    if args.list:
        print("\n".join(f"{m['id']:45s} {m['description']}" for m in MUTATIONS))
        return 0
    chosen = MUTATIONS
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            raise SystemExit(f"unknown mutation id(s): {', '.join(unknown)}")
        chosen = [m for m in MUTATIONS if m["id"] in wanted]
    jobs = max(1, min(args.jobs, len(chosen)))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        copies: queue.Queue = queue.Queue()
        for j in range(jobs):
            copy = Path(tmp) / f"copy{j}"
            _copy_repository(copy)
            copies.put(copy)
        probe = copies.get()
        where = subprocess.run([args.python, "-c", "import workbench; print(workbench.__file__)"], cwd=probe,
                               env=_environment(probe), capture_output=True, text=True)
        copies.put(probe)
        if not where.stdout.strip().startswith(str(Path(tmp).resolve())) and \
                not where.stdout.strip().startswith(tmp):
            raise SystemExit(f"the copy does not import its own workbench package: {where.stdout}{where.stderr}")

        selections = list(dict.fromkeys(_key(m["tests"]) for m in chosen))
        print(f"baseline: {len(selections)} distinct test selections, unmutated", flush=True)
        baseline = _baselines(selections, args.python, copies, jobs)
        failing = {s: r for s, r in baseline.items() if r["rc"] != 0}
        if failing:
            for selection, run in failing.items():
                print(f"\nBASELINE FAILS (rc={run['rc']}): pytest {' '.join(pytest_args(selection))}\n{run['tail']}")
            print("refusing to run mutations: the unmutated selections must pass first", file=sys.stderr)
            return 2

        def one(m):
            copy = copies.get()
            try:
                timeout = args.timeout or 3 * baseline[_key(m["tests"])]["seconds"] + 60
                result = _run_mutation(m, args.python, copy, timeout)
            finally:
                copies.put(copy)
            print(f"{result['outcome']:9s} {result['seconds']:6.1f} s  {m['id']}  ({result['detail']})", flush=True)
            return result

        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(one, chosen))
    runtime = time.perf_counter() - start
    summary = _summary(results)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    meta = {"commit": commit + ("+uncommitted" if dirty else ""), "platform": platform.platform(),
            "python": args.python, "jobs": jobs, "runtime_s": round(runtime, 1),
            "baseline_s": {" ".join(pytest_args(s)): r["seconds"] for s, r in baseline.items()}}
    compare = Path(args.compare)
    earlier = None
    if compare.is_file() and compare.resolve() != Path(args.out).with_suffix(".json").resolve():
        earlier = json.loads(compare.read_text())
    _write(results, summary, Path(args.out), meta, earlier)
    print(f"\nscore {summary['score']:.3f}: {summary['killed']} killed, {summary['survived']} survived "
          f"({summary['survived_equivalent']} equivalent), {summary['errors']} errors; {runtime:.0f} s; "
          f"written {Path(args.out).with_suffix('.md')}")
    for r in results:
        if r["outcome"] == "survived" and not r["equivalent"]:
            print(f"  SURVIVED {r['id']}: {r['description']}")
    return 1 if summary["survived"] > summary["survived_equivalent"] else 0


if __name__ == "__main__":
    sys.exit(main())
