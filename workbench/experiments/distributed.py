"""The distributed-minimisation paper's job: one script, run as 1 or N processes by the launcher.

`run_job(out_dir, num_processes, config)` launches `python -m workbench.experiments.distributed
OUT_DIR CONFIG_JSON` as a local multi-process job (`workbench.distributed.launch`) and loads what
process 0 wrote. Every process of the job runs `job`:
1. classification: multinomial logistic regression (L2) on the digits training split, examples
   split across the processes, minimised by L-BFGS (optax);
2. sparse regression: least squares + L1 on synthetic data with a sparse truth, by OWL-QN;
3. entropic optimal transport between two point clouds by L-BFGS on the dual potentials, the cost
   built per block;
4. time per iteration at several dataset sizes (a fixed number of L-BFGS steps).
Each solve is run twice and the second (compiled) run timed; the collective payload of one
objective evaluation is read off the compiled program (`distributed.profile`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from workbench.experiments.distributed_problems import (
    binary_data,
    binary_loss,
    lasso_reference,
    point_clouds,
    softmax_loss,
    softmax_reference,
    sparse_regression,
    squared_loss,
)
from workbench.experiments.timing import best_time

RESULTS_FILE = "results.npz"


@dataclass(frozen=True)
class JobConfig:
    """The job's problem sizes and strengths (passed to every process as JSON)."""

    seed: int = 0
    l2: float = 1e-3  # classification L2 strength
    regression_examples: int = 2000
    regression_features: int = 100
    l1: float = 0.05  # sparse-regression L1 strength
    ot_points: int = 300  # n = m points per cloud
    epsilon: float = 0.05  # entropic regularisation
    ot_chunk: int = 128  # cost columns built at a time
    scaling_sizes: tuple[int, ...] = (2000, 8000)  # examples for the time-per-iteration sweep
    scaling_features: int = 50
    scaling_steps: int = 50
    scaling_repeats: int = 3  # timed runs per size (after one that compiles); the fastest is kept


class JobResult(NamedTuple):
    """One launched job: its shape, what process 0 wrote and the job's wall time."""

    num_processes: int
    devices_per_process: int
    results: dict  # arrays and numbers written by process 0
    seconds: float  # wall time of the whole job (start-up and compilation included)


class OptimumDifferences(NamedTuple):
    """Max absolute differences between two runs' optima (relative for the OT numbers)."""

    classification_w: float
    classification_b: float  # the softmax biases up to their common shift
    sparse_regression_w: float
    ot_dual_relative: float
    ot_transport_cost_relative: float


class SinkhornReference(NamedTuple):
    """The entropic-OT dual value and transport cost of dense log-domain Sinkhorn."""

    dual: float
    transport_cost: float


class OverheadRow(NamedTuple):
    """One solve of one run: its steps, time and collective payload per step."""

    solve: str
    processes: int
    steps: int
    ms_per_step: float
    evals_per_step: float
    bytes_per_eval: int | None  # None when the run did not record it


# ----------------------------------------------------------------------------- the job (every process)


def _payload(loss_fn, params, data, l2=0.0) -> int:
    import jax

    from workbench import distributed as dist
    from workbench.distributed import profile

    fn = lambda p, d: jax.value_and_grad(lambda q: dist.objective_value(loss_fn, q, d, l2))(p)
    return profile.collective_bytes(fn, dist.replicate(params, data.mesh), data).total


def _gathered_payload(loss_fn, params, data, l2=0.0) -> int:
    """The collective payload of the broken variant that gathers every example to every device
    and evaluates the objective there (instead of reducing one gradient)."""
    import jax
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from workbench import distributed as dist
    from workbench.distributed import profile

    everywhere = NamedSharding(data.mesh, P())

    def value(q, d):
        rows = jax.lax.with_sharding_constraint(d.data, everywhere)
        return loss_fn(q, rows) + 0.5 * l2 * optax.tree.vdot(q, q)

    fn = lambda p, d: jax.value_and_grad(value)(p, d)
    return profile.collective_bytes(fn, dist.replicate(params, data.mesh), data).total


def job(out_dir: str | Path, config: JobConfig) -> None:
    """What every process of the job runs (the four solves of the module docstring); process 0
    writes the results to `out_dir/results.npz`.

    Args:
        out_dir: the folder of the results file.
        config: the job's configuration.
    """
    from workbench import distributed as dist

    info = dist.initialize(timeout_s=120)
    import jax

    jax.config.update("jax_enable_x64", True)
    from workbench.data import load_digits
    from workbench.distributed import profile

    res: dict = {"process_count": info.process_count, "global_devices": info.global_devices}

    # 1. classification on digits, L2, L-BFGS
    train, test = load_digits(seed=config.seed)
    x, y = np.asarray(train.x, np.float64), np.asarray(train.y)
    blk = dist.local_block(len(x))
    data = dist.shard_examples((x[blk], y[blk]))
    p0 = {"w": np.zeros((x.shape[1], 10)), "b": np.zeros(10)}
    r, sec = best_time(lambda: dist.lbfgs(softmax_loss, p0, data, l2=config.l2, num_steps=1000, tol=1e-12), repeats=1, warmup=True)
    logits = np.asarray(test.x, np.float64) @ r.params["w"] + r.params["b"]
    untrained = np.zeros_like(logits)  # the zero classifier, L-BFGS's start: every logit equal
    res.update(clf_w=r.params["w"], clf_b=r.params["b"], clf_value=r.value, clf_steps=r.num_steps,
               clf_evals=r.num_evaluations, clf_seconds=sec, clf_examples=len(x),
               clf_test_accuracy=float(np.mean(logits.argmax(1) == np.asarray(test.y))),
               control_untrained_test_accuracy=float(np.mean(untrained.argmax(1) == np.asarray(test.y))),
               clf_bytes_per_eval=_payload(softmax_loss, p0, data, config.l2),
               clf_rows_per_process=np.asarray(dist.rows_per_process(data)),
               clf_load=dist.load_over_even_share(data, len(x)))
    # the controls: every process holding every example (the same optimum, P times the work), and
    # an objective that gathers every example to every device instead of reducing one gradient
    everything = dist.shard_examples((x, y))
    res.update(control_all_data_load=dist.load_over_even_share(everything, len(x)),
               control_gathered_bytes_per_eval=_gathered_payload(softmax_loss, p0, data, config.l2))

    # 2. sparse regression, L1, OWL-QN
    xr, yr, w_true = sparse_regression(config.seed, config.regression_examples, config.regression_features)
    blk = dist.local_block(len(xr))
    data = dist.shard_examples((xr[blk], yr[blk]))
    q0 = {"w": np.zeros(config.regression_features)}
    r, sec = best_time(lambda: dist.owlqn(squared_loss, q0, data, l1=config.l1, num_steps=1000), repeats=1, warmup=True)
    res.update(l1_w=r.params["w"], l1_value=r.value, l1_steps=r.num_steps, l1_evals=r.num_evaluations,
               l1_seconds=sec, l1_true_w=w_true, l1_bytes_per_eval=_payload(squared_loss, q0, data))

    # 3. entropic OT between two clouds, cost built per block
    xs, ys = point_clouds(config.seed, config.ot_points)
    px = dist.shard_examples(xs[dist.local_block(len(xs))])
    py = dist.shard_examples(ys[dist.local_block(len(ys))])
    r, sec = best_time(lambda: dist.entropic_ot(px, py, config.epsilon, chunk_size=config.ot_chunk, num_steps=5000), repeats=1, warmup=True)
    start, args = dist.ot.dual_problem(px, py, config.epsilon, config.ot_chunk)
    fn = lambda pot, a: jax.value_and_grad(dist.ot.negative_dual)(pot, a)
    res.update(ot_bytes_per_eval=profile.collective_bytes(fn, start, args).total)
    res.update(ot_x=xs, ot_y=ys, ot_u=r.u, ot_v=r.v, ot_dual=r.dual, ot_cost=r.transport_cost,
               ot_marginal_error=r.marginal_error, ot_steps=r.num_steps, ot_evals=r.num_evaluations,
               ot_seconds=sec)

    # 4. time per iteration against the number of examples (fixed steps, same work per step)
    per_step = []
    for n in config.scaling_sizes:
        xb, yb = binary_data(config.seed, n, config.scaling_features)
        blk = dist.local_block(n)
        data = dist.shard_examples((xb[blk], yb[blk]))
        b0 = {"w": np.zeros(config.scaling_features), "b": np.zeros(())}
        r, sec = best_time(lambda data=data, b0=b0: dist.lbfgs(
            binary_loss, b0, data, l2=1e-3, num_steps=config.scaling_steps, tol=0.0, require_convergence=False),
            repeats=config.scaling_repeats, warmup=True)
        per_step.append(sec / max(r.num_steps, 1))
    res.update(scaling_sizes=np.asarray(config.scaling_sizes), scaling_seconds_per_step=np.asarray(per_step))

    if info.process_index == 0:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / RESULTS_FILE, **{k: np.asarray(v) for k, v in res.items()})
    dist.shutdown(timeout_s=120)


# ----------------------------------------------------------------------------- the parent side


def run_job(out_dir: str | Path, num_processes: int, config: JobConfig | None = None, *,
            devices_per_process: int = 1, timeout: float = 900.0, echo: bool = False) -> JobResult:
    """Run `job` as `num_processes` processes through the launcher; load process 0's results.

    Args:
        out_dir: the folder the job writes to.
        num_processes: the number of processes.
        config: the job's configuration (default `JobConfig()`).
        devices_per_process: CPU devices per process.
        timeout: seconds the job may take.
        echo: forward the processes' output.

    Returns:
        The `JobResult`.

    Raises:
        workbench.distributed.LaunchError: a process failed or the job timed out.
    """
    from workbench import distributed as dist

    config = config or JobConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    launched = dist.launch("workbench.experiments.distributed", num_processes, module=True,
                           devices_per_process=devices_per_process, timeout=timeout, echo=echo,
                           args=[str(out_dir), json.dumps(asdict(config))])
    with np.load(out_dir / RESULTS_FILE) as f:
        results = {k: f[k] for k in f.files}
    return JobResult(num_processes, devices_per_process, results, launched.seconds)


def _centred(b):
    return b - b.mean()


def differences(a: JobResult, b: JobResult) -> OptimumDifferences:
    """Max absolute differences between two runs' optima (b of the softmax up to its shift).

    Args:
        a: one run.
        b: the other run (the reference of the relative OT differences).

    Returns:
        The `OptimumDifferences`.
    """
    ra, rb = a.results, b.results
    rel = lambda p, q: float(abs(p - q) / abs(q))
    return OptimumDifferences(
        classification_w=float(np.max(np.abs(ra["clf_w"] - rb["clf_w"]))),
        classification_b=float(np.max(np.abs(_centred(ra["clf_b"]) - _centred(rb["clf_b"])))),
        sparse_regression_w=float(np.max(np.abs(ra["l1_w"] - rb["l1_w"]))),
        ot_dual_relative=rel(float(ra["ot_dual"]), float(rb["ot_dual"])),
        ot_transport_cost_relative=rel(float(ra["ot_cost"]), float(rb["ot_cost"])),
    )


def sinkhorn_reference(x: np.ndarray, y: np.ndarray, epsilon: float, num_iters: int = 20000,
                       tol: float = 1e-12) -> SinkhornReference:
    """The dual and transport cost by log-domain Sinkhorn on the dense cost matrix in numpy: the
    one-machine reference for small clouds.

    Args:
        x: [n, dim] the first cloud.
        y: [m, dim] the second cloud.
        epsilon: the entropic regularisation.
        num_iters: the most Sinkhorn iterations.
        tol: stop when the potential g moves less than this (max norm).

    Returns:
        `SinkhornReference(dual, transport_cost)`.
    """
    from scipy.special import logsumexp

    c = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    n, m = len(x), len(y)
    f, g = np.zeros(n), np.zeros(m)
    for _ in range(num_iters):
        f = -epsilon * logsumexp((g[None] - c) / epsilon, axis=1, b=1 / m)
        g_new = -epsilon * logsumexp((f[:, None] - c) / epsilon, axis=0, b=1 / n)
        done = np.max(np.abs(g_new - g)) < tol
        g = g_new
        if done:
            break
    p = np.exp((f[:, None] + g[None] - c) / epsilon) / (n * m)
    return SinkhornReference(float(f.mean() + g.mean()), float((p * c).sum()))


class ReferenceOptima(NamedTuple):
    """One-machine optima of the job's problems, computed without the distributed code."""

    classification_w: np.ndarray
    classification_b: np.ndarray
    sparse_regression_w: np.ndarray
    ot_dual: float  # dense log-domain Sinkhorn
    ot_transport_cost: float


class ReferenceDifferences(NamedTuple):
    """A job's optima against `ReferenceOptima`: max absolute differences (relative for OT)."""

    classification: float  # max over w and b
    sparse_regression: float
    ot_dual_relative: float


def reference_optima(config: JobConfig, block: tuple[int, int] | None = None) -> ReferenceOptima:
    """The job's three problems solved on one machine by the independent references
    (`softmax_reference`, `lasso_reference`, `sinkhorn_reference`), on the whole data or, with
    `block=(i, P)`, on process i's block of a P-process job only: the optimum a process reaches
    when its gradient is never all-reduced (a negative control).

    Args:
        config: the job's configuration (seed, sizes, strengths).
        block: (process_index, process_count), or None for the whole data.

    Returns:
        The `ReferenceOptima`.

    Raises:
        ValueError: if `block` does not name a process of the job.
    """
    from workbench.data import load_digits
    from workbench.distributed import local_block

    if block is not None and not (len(block) == 2 and 0 <= block[0] < block[1]):
        raise ValueError(f"block must be (process_index, process_count) with 0 <= index < count, got {block!r}")
    cut = (lambda n: slice(0, n)) if block is None else (lambda n: local_block(n, *block))
    train, _ = load_digits(seed=config.seed)
    x, y = np.asarray(train.x, np.float64), np.asarray(train.y)
    clf = softmax_reference(x[cut(len(x))], y[cut(len(x))], config.l2)
    xr, yr, _ = sparse_regression(config.seed, config.regression_examples, config.regression_features)
    l1 = lasso_reference(xr[cut(len(xr))], yr[cut(len(xr))], config.l1)
    xs, ys = point_clouds(config.seed, config.ot_points)
    ot = sinkhorn_reference(xs[cut(len(xs))], ys[cut(len(ys))], config.epsilon)
    return ReferenceOptima(clf.w, clf.b, l1.w, ot.dual, ot.transport_cost)


def _optima(run: JobResult | ReferenceOptima) -> ReferenceOptima:
    if isinstance(run, ReferenceOptima):
        return run
    r = run.results
    return ReferenceOptima(r["clf_w"], r["clf_b"], r["l1_w"], float(r["ot_dual"]), float(r["ot_cost"]))


def reference_differences(run: JobResult | ReferenceOptima,
                          reference: JobResult | ReferenceOptima) -> ReferenceDifferences:
    """One set of optima against another: a job's (process 0's) or the references'.

    Args:
        run: a `JobResult` or `ReferenceOptima`.
        reference: the `JobResult` or `ReferenceOptima` compared with (the reference of the
            relative OT difference).

    Returns:
        The `ReferenceDifferences`.
    """
    run, reference = _optima(run), _optima(reference)
    return ReferenceDifferences(
        classification=float(max(np.max(np.abs(run.classification_w - reference.classification_w)),
                                 np.max(np.abs(run.classification_b - reference.classification_b)))),
        sparse_regression=float(np.max(np.abs(run.sparse_regression_w - reference.sparse_regression_w))),
        ot_dual_relative=float(abs(run.ot_dual - reference.ot_dual) / abs(reference.ot_dual)),
    )


def overhead_table(runs: list[JobResult]) -> list[OverheadRow]:
    """One row per run and solve: time per iteration and collective bytes per evaluation.

    Args:
        runs: the job results.

    Returns:
        The `OverheadRow`s, three per run (classification, sparse regression, OT).
    """
    rows = []
    for run in runs:
        r = run.results
        for name, key in (("classification (L-BFGS)", "clf"), ("sparse regression (OWL-QN)", "l1"),
                          ("entropic OT (L-BFGS)", "ot")):
            steps = int(r[f"{key}_steps"])
            evals = int(r[f"{key}_evals"])
            per_eval = int(r.get(f"{key}_bytes_per_eval", -1))
            rows.append(OverheadRow(
                solve=name, processes=run.num_processes, steps=steps,
                ms_per_step=1000 * float(r[f"{key}_seconds"]) / max(steps, 1),
                evals_per_step=evals / max(steps, 1),
                bytes_per_eval=per_eval if per_eval >= 0 else None,
            ))
    return rows


def main(argv: list[str]) -> None:
    """The job's entry point in each launched process.

    Args:
        argv: [out_dir, config as JSON].
    """
    raw = json.loads(argv[1])
    raw["scaling_sizes"] = tuple(raw.get("scaling_sizes", ()))
    job(argv[0], JobConfig(**raw))


if __name__ == "__main__":
    main(sys.argv[1:])


__all__ = ["JobConfig", "JobResult", "ReferenceDifferences", "ReferenceOptima", "differences", "job", "overhead_table",
           "reference_differences", "reference_optima", "run_job", "sinkhorn_reference"]
