# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: workbench,kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   workbench:
#     claims:
#       bytes_per_eval_over_gradient:
#       - 0.99
#       - 1.01
#       classification_max_diff: <1e-8
#       classification_vs_reference_max_diff: <1e-7
#       load_over_even_share:
#       - 0.99
#       - 1.01
#       ot_dual_rel_diff: <1e-9
#       ot_vs_dense_sinkhorn_rel: <1e-8
#       sparse_regression_max_diff: <1e-8
#       sparse_regression_vs_reference_max_diff: <1e-7
#       test_accuracy: '>0.9'
#     controls:
#       control_all_data_load: load_over_even_share
#       control_gathered_bytes_per_eval_over_gradient: bytes_per_eval_over_gradient
#       control_local_classification_max_diff: classification_max_diff
#       control_local_classification_vs_reference: classification_vs_reference_max_diff
#       control_local_ot_dual_rel_diff: ot_dual_rel_diff
#       control_local_ot_vs_dense_sinkhorn_rel: ot_vs_dense_sinkhorn_rel
#       control_local_sparse_regression_max_diff: sparse_regression_max_diff
#       control_local_sparse_regression_vs_reference: sparse_regression_vs_reference_max_diff
#       control_untrained_test_accuracy: test_accuracy
#     full:
#       ot_points: 1500
#       regression_examples: 20000
#       scaling_repeats: 3
#       scaling_sizes:
#       - 2000
#       - 8000
#       - 32000
#       - 128000
#       scaling_steps: 50
#     quick_seconds: 150
#     summary: Minimise a loss and solve optimal transport across several JAX processes
#     title: Distributed function minimisation with JAX processes (Schioppa 2019)
# ---

# %% [markdown]
# # Distributed function minimisation, with JAX's own multi-process engine
#
# Schioppa's "Distributed Function Minimization in Apache Spark" (arXiv 1909.07922) minimises
# objectives whose data are split across workers with L-BFGS and OWL-QN, and applies them to
# regression, classification and entropic optimal transport. Here the same algorithms run as a
# real multi-process JAX job: `python -m workbench.distributed launch` starts the processes, each
# holds its own block of examples (`jax.make_array_from_process_local_data`), every objective
# evaluation sums its per-device part and all-reduces one gradient, and every process takes the
# same steps.
#
# **Claim.** Split across two processes, L-BFGS (optax), OWL-QN (L1) and the entropic-OT dual
# reach the single-process optimum to round-off (max parameter difference < 1e-8) and the optima
# of independent one-machine solvers (scipy + Newton, scikit-learn + the exact optimality
# condition, dense Sinkhorn); each process evaluates only its share of the examples (N/P rows per
# objective evaluation); each evaluation communicates exactly one gradient plus the value; the OT
# solution, built from cost blocks without ever forming the cost matrix, matches a dense Sinkhorn
# to round-off.
#
# **Negative controls**, each of which must fail the claim it stands next to: every process
# holding every example (it reaches the same optimum, at P times the work per process), an
# objective that gathers the examples to every device instead of reducing one gradient, a process
# that never all-reduces its gradient (the optimum of its own block), and the untrained classifier.

# %% tags=["parameters"]
num_processes: int = 2  # processes of the distributed job (compared with 1 process); in [1, 16]
devices_per_process: int = 1  # CPU devices per process (JAX_NUM_CPU_DEVICES); in [1, 16]
l2: float = 1e-3  # L2 strength of the digits classifier; in [0, inf)
regression_examples: int = 2000  # examples of the sparse regression; in [1, inf)
regression_features: int = 100  # features of the sparse regression (10% carry signal); in [10, inf)
l1: float = 0.05  # L1 strength of the sparse regression; in [0, inf)
ot_points: int = 200  # points in each cloud (the same for both); in [1, inf)
epsilon: float = 0.05  # entropic regularisation of the OT problem (squared-distance units); in (0, inf)
scaling_sizes: list[int] = [2000, 8000]  # examples for the time-per-iteration sweep; in [1, inf)
scaling_steps: int = 20  # L-BFGS steps timed at each size of the sweep; in [1, inf)
scaling_repeats: int = 1  # timed runs per size after the compiling one (the fastest is kept); in [1, inf)
seed: int = 0  # data of every problem; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: processes, points, epsilon -> OT plan (real jobs)

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import workbench
from workbench import distributed as dist
from workbench.experiments import distributed as exp
from workbench.plots import distributed as dplots

work = workbench.run.results.run_dir() or Path(tempfile.mkdtemp(prefix="distributed-"))
config = exp.JobConfig(seed=seed, l2=l2, regression_examples=regression_examples,
                       regression_features=regression_features, l1=l1, ot_points=ot_points,
                       epsilon=epsilon, scaling_sizes=tuple(scaling_sizes), scaling_steps=scaling_steps,
                       scaling_repeats=scaling_repeats)

# %% [markdown]
# ## Run the job on one process, then on several
# `run_job` launches `python -m workbench.experiments.distributed` as a job of `num_processes`
# processes through the launcher (free port, output prefixed by process, every process stopped if
# one fails) and reads what process 0 wrote. Every process computes the same numbers; the
# examples of every problem are split into contiguous blocks, one per process.

# %%
one = exp.run_job(work / "job-1", 1, config, devices_per_process=devices_per_process)
many = exp.run_job(work / f"job-{num_processes}", num_processes, config, devices_per_process=devices_per_process)
print(f"1 process: {one.seconds:.0f} s; {num_processes} processes: {many.seconds:.0f} s "
      "(wall time, start-up and compilation included)")

# %% [markdown]
# ## The same optimum
# Max absolute differences between the one-process and the multi-process optima. They differ
# only in the order the per-example terms are summed, so round-off is all that separates them.

# %%
diffs = exp.differences(one, many)
for name, value in diffs._asdict().items():
    print(f"{name:30s} {value:.2e}")
r = many.results
print(f"digits: {int(r['clf_steps'])} L-BFGS steps, test accuracy {float(r['clf_test_accuracy']):.3f}")
print(f"sparse regression: {int(r['l1_steps'])} OWL-QN steps, {int(np.sum(r['l1_w'] != 0))} of "
      f"{len(r['l1_w'])} weights non-zero (truth: {int(np.sum(r['l1_true_w'] != 0))})")

# %% [markdown]
# ## Independent references and negative controls
# The one-process run shares every line of code with the multi-process one, so equality with it
# cannot catch a bug in the solvers themselves. The references below use none of the distributed
# code: the digits optimum by scipy's L-BFGS-B on a NumPy gradient, polished by two Newton steps
# with the NumPy Hessian; the sparse regression by scikit-learn's coordinate descent, with the
# optimality condition on its support then solved exactly; the OT dual by dense log-domain
# Sinkhorn in NumPy.
#
# Equality of optima cannot see *where* the examples were: a job in which every process holds
# every example reaches the same optimum. What tells them apart is the work per process, counted
# from the arrays each process holds: the most rows any process evaluates per objective evaluation,
# over an even share N/P. The controls: the job's own data placed on every process in full
# (`control_all_data_load`, P), the collective payload of an objective that gathers the examples
# to every device instead of reducing a gradient, a process that never all-reduces (the
# references' optima on process 0's block alone), and the zero (untrained) classifier.

# %%
reference = exp.reference_optima(config)
local_only = exp.reference_optima(config, block=(0, num_processes))
vs_reference = exp.reference_differences(many, reference)
local_vs_reference = exp.reference_differences(local_only, reference)
local_vs_one = exp.reference_differences(local_only, one)
for name, got, control in zip(vs_reference._fields, vs_reference, local_vs_reference):
    print(f"{name:20s} {num_processes} processes vs reference {got:.1e}   process 0's block alone {control:.1e}")
print(f"rows per process {r['clf_rows_per_process'].tolist()} of {int(r['clf_examples'])} examples: "
      f"{float(r['clf_load']):.4f} x an even share; every process holding everything: {float(r['control_all_data_load']):.2f} x")

# %% [markdown]
# ## What one iteration costs
# Time per step (compiled, second run) and the collective payload of one objective evaluation,
# read off the compiled program: the digits model has 650 parameters, so one evaluation
# all-reduces 651 float64 numbers (the gradient and the value) = 5208 bytes per device. A step
# costs one evaluation plus the line search's extra trials (`evals/step`).
#
# On this 2-core machine, shared with other jobs, wall times are noisy and several processes
# compete for the same cores: read the time columns as an order of magnitude. What needs more
# machines: speed-up with processes (each process here gets at most one core), and network
# latency and bandwidth (the "network" here is localhost).

# %%
rows = exp.overhead_table([one, many])
print(f"{'solve':28s} {'procs':>5s} {'steps':>6s} {'ms/step':>9s} {'evals/step':>10s} {'bytes/eval':>10s}")
for row in rows:
    print(f"{row.solve:28s} {row.processes:5d} {row.steps:6d} {row.ms_per_step:9.2f} "
          f"{row.evals_per_step:10.2f} {row.bytes_per_eval if row.bytes_per_eval is not None else '-':>10}")

# %% [markdown]
# ## Time per step against the number of examples
# A fixed number of L-BFGS steps of a binary logistic regression at several dataset sizes. One
# process: the time grows with the examples. Several processes: at these sizes a step is
# dominated by the all-reduce round trip between processes (milliseconds on this shared 2-core
# box, and noisy), so the line is flat or even wobbles down; splitting pays only once the
# per-step compute exceeds that latency, which needs larger data and more cores than CI has
# (the `full` profile goes to 128k examples; `benchmarks/bench_distributed.py` has 1/2/4
# processes at fixed total work).

# %%
fig = dplots.time_per_step(list(one.results["scaling_sizes"]), {
    "1 process": one.results["scaling_seconds_per_step"],
    f"{num_processes} processes": many.results["scaling_seconds_per_step"],
})
workbench.save_figure(fig, "time_per_step")
plt.show()

# %% [markdown]
# ## Entropic optimal transport, cost built per block
# The potentials u (on x) and v (on y) are split by block across the devices; each device
# builds its rows of the cost against `ot_chunk` columns at a time, never the n x m matrix.
# Left: the heaviest entries of the plan P_ij = exp((u_i + v_j - c_ij)/eps)/(n m); right: the
# plan with points sorted by angle. With small epsilon the plan is close to a map (one bright
# entry per row); larger epsilon blurs it.

# %%
x, y = r["ot_x"], r["ot_y"]
transport = dist.plan(x, y, r["ot_u"], r["ot_v"], epsilon)
fig = dplots.ot_plan(x, y, transport)
workbench.save_figure(fig, "ot_plan")
plt.show()
dense_dual, dense_cost = reference.ot_dual, reference.ot_transport_cost
print(f"dual {float(r['ot_dual']):.8f} vs dense Sinkhorn {dense_dual:.8f} (rel {vs_reference.ot_dual_relative:.1e}); "
      f"transport cost {float(r['ot_cost']):.6f} vs {dense_cost:.6f}; marginal error {float(r['ot_marginal_error']):.1e}")

# %%
gradient_bytes = 8 * (r["clf_w"].size + r["clf_b"].size + 1)  # float64 gradient plus the value
workbench.record(
    classification_max_diff=max(diffs.classification_w, diffs.classification_b),
    sparse_regression_max_diff=diffs.sparse_regression_w,
    ot_dual_rel_diff=diffs.ot_dual_relative,
    classification_vs_reference_max_diff=vs_reference.classification,
    sparse_regression_vs_reference_max_diff=vs_reference.sparse_regression,
    ot_vs_dense_sinkhorn_rel=vs_reference.ot_dual_relative,
    load_over_even_share=float(r["clf_load"]),
    test_accuracy=float(r["clf_test_accuracy"]),
    bytes_per_eval_over_gradient=float(r["clf_bytes_per_eval"]) / gradient_bytes,
    control_all_data_load=float(r["control_all_data_load"]),
    control_gathered_bytes_per_eval_over_gradient=float(r["control_gathered_bytes_per_eval"]) / gradient_bytes,
    control_local_classification_max_diff=local_vs_one.classification,
    control_local_sparse_regression_max_diff=local_vs_one.sparse_regression,
    control_local_ot_dual_rel_diff=local_vs_one.ot_dual_relative,
    control_local_classification_vs_reference=local_vs_reference.classification,
    control_local_sparse_regression_vs_reference=local_vs_reference.sparse_regression,
    control_local_ot_vs_dense_sinkhorn_rel=local_vs_reference.ot_dual_relative,
    control_untrained_test_accuracy=float(r["control_untrained_test_accuracy"]),
    overhead=[row._asdict() for row in rows],
    num_processes=num_processes,
)

# %% [markdown]
# ## On a real cluster
# The job script is unchanged: `workbench.distributed.initialize()` finds SLURM / Open MPI /
# Kubernetes through `jax.distributed.initialize()`'s own cluster detection. On SLURM:
#
# ```
# srun --nodes=2 --ntasks-per-node=1 python -m workbench.experiments.distributed OUT '{"ot_points": 20000}'
# ```
#
# and on this machine: `python -m workbench.distributed launch -n 2 -m workbench.experiments.distributed OUT '{}'`.
#
# **What the quick profile shows and does not.** It shows equality with one process, the
# communication per evaluation, and time per step on a shared 2-core machine; it does not show
# speed-up with processes or the cost of a real network, which need more machines.

# %% [markdown]
# ## Explore
# With `interactive=True`: solve the OT problem again as a multi-process job with other
# processes, points and epsilon (each run takes tens of seconds: it starts real processes).

# %%
if interactive:
    from workbench.ui.distributed import ot_job_panel

    panel = ot_job_panel(exp.run_job, config, num_processes)
    from IPython.display import display

    display(panel.widget)
