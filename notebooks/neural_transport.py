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
#       cost_term_margin: '>0'
#       flow_matching_ot_margin: '>0'
#       sinkhorn_regression_margin: '>0'
#     controls:
#       control_independent_coupling_margin: flow_matching_ot_margin
#       control_no_cost_term_margin: cost_term_margin
#       control_one_iteration_margin: sinkhorn_regression_margin
#       control_transposed_plan_margin: sinkhorn_regression_margin
#     full:
#       dims:
#       - 2
#       - 8
#       - 32
#       disks_methods:
#       - not moving
#       - 1-NN flow
#       - 1-NN flow + cost
#       - symmetric flow
#       - symmetric flow + cost
#       - kernel flow
#       - kernel flow + cost
#       - covariance flow
#       - Seguy dual
#       - Sinkhorn regression
#       - flow matching, independent
#       - flow matching, exact OT
#       - entropic map
#       - Monge gap
#       methods:
#       - not moving
#       - 1-NN flow
#       - 1-NN flow + cost
#       - 5-NN flow
#       - symmetric flow
#       - symmetric flow + cost
#       - kernel flow
#       - kernel flow + cost
#       - covariance flow
#       - Seguy dual
#       - Sinkhorn regression
#       - 'control: 1-iteration Sinkhorn'
#       - 'control: transposed plan'
#       - flow matching, independent
#       - flow matching, Sinkhorn
#       - flow matching, exact OT
#       - entropic map
#       - Monge gap
#       num_points: 1000
#       num_seeds: 3
#       num_steps: 1000
#     quick_seconds: 30
#     summary: Neural maps pushing one distribution onto another, checked where the
#       answer is known
#     title: Learning to transport with neural networks, heuristic flows against OT-principled
#       estimators on problems with a known answer (Schioppa 2019)
# ---

# %% [markdown]
# # Learning to transport with neural networks
#
# **Claims.** Schioppa (2019), *Learning to Transport with Neural Networks: a comparison of
# mathematically sound & heuristic approaches* (arXiv 1908.01394), trains a neural map T that
# pushes a distribution mu onto nu and compares "heuristic" flows (T follows the gradient of a
# discrepancy between the batches T(x) and y) with methods motivated by the dual of the
# Kantorovich problem and with reductions of OT to supervised learning. Here, on problems whose
# optimal map is known exactly: (1) the **supervised reduction** (regress T on the barycentric
# projection of each batch's Sinkhorn plan) recovers the optimal map, while the same
# regression with a **broken Sinkhorn** (one iteration) or a **transposed plan** does not;
# (2) on the paper's **unit disk to four disks**, the 1-nearest-neighbour flow needs its **transport-cost
# term**: without it the map it learns is far from the optimal assignment; (3) **flow
# matching** recovers the optimal map only with an **OT coupling** of its pairs, not with
# independent pairs.
#
# We could read only the paper's abstract here (neither its text nor its tables nor its 2019
# PyTorch code were available to us), so every construction below is our reading of the
# family it names, and the paper's own disks table is not reproduced next to ours.
#
# You will see: the problems; every method's map drawn over the target; the method x problem
# table (L2 unexplained variance against the true map, transport cost against W2^2, and the
# exact-assignment W2 between mapped and target samples next to the target-vs-target floor);
# the disks problem; and the claims with their negative controls.

# %% tags=["parameters"]
dims: list[int] = [2]  # dimensions of the Gaussian and Brenier problems; in [1, inf)
methods: list[str] = ["not moving", "symmetric flow", "Sinkhorn regression", "control: 1-iteration Sinkhorn", "control: transposed plan", "flow matching, independent", "flow matching, exact OT", "entropic map"]  # methods on the Gaussian and Brenier problems (experiments.transport.METHODS); in {not moving, 1-NN flow, 1-NN flow + cost, 5-NN flow, symmetric flow, symmetric flow + cost, kernel flow, kernel flow + cost, covariance flow, Seguy dual, Sinkhorn regression, "control: 1-iteration Sinkhorn", "control: transposed plan", "flow matching, independent", "flow matching, Sinkhorn", "flow matching, exact OT", entropic map, Monge gap}
disks_methods: list[str] = ["1-NN flow", "1-NN flow + cost"]  # methods on the disks problem (empty: skip it); in {not moving, 1-NN flow, 1-NN flow + cost, 5-NN flow, symmetric flow, symmetric flow + cost, kernel flow, kernel flow + cost, covariance flow, Seguy dual, Sinkhorn regression, "control: 1-iteration Sinkhorn", "control: transposed plan", "flow matching, independent", "flow matching, Sinkhorn", "flow matching, exact OT", entropic map, Monge gap}
num_steps: int = 300  # Adam steps per method (each phase of the Seguy dual); in [1, inf)
batch_size: int = 128  # points per batch of each distribution; in [1, inf)
learning_rate: float = 0.005  # Adam step size (the Seguy dual uses 0.001); in (0, inf)
hidden: int = 64  # width of every network (two SiLU hidden layers); in [1, inf)
num_points: int = 500  # evaluation points (and exact-assignment size); in [2, inf)
uvp_threshold: float = 20.0  # L2-UVP (%) a method must stay under on every 2-d problem with a known map; in (0, inf)
disks_threshold: float = 33.0  # L2-UVP (%) against the exact assignment on the disks problem; in (0, inf)
problem_seed: int = 0  # the random Gaussian and Brenier instances; in [0, inf)
num_seeds: int = 1  # training seeds per method; in [1, inf)
seed: int = 0  # seeds are seed * num_seeds, ..., seed * num_seeds + num_seeds - 1; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: pick a problem and a method, train, see the map

# %%
import matplotlib.pyplot as plt

import workbench
from workbench.experiments import transport as recipes
from workbench.plots import transport as transport_plots

seeds = [seed * num_seeds + i for i in range(num_seeds)]
problems = {}
for d in dims:
    for name in ("gaussian", "brenier"):
        problems[f"{name} {d}-d"] = recipes.make_problem(name, d, problem_seed)
for label, p in problems.items():
    w2 = f"{p.w2_squared:.3f}" if p.w2_squared else "by Monte Carlo"
    print(f"{label}: Var(nu) = {p.target_variance:.3f}, W2^2 = {w2}")
print(f"seeds {seeds}; {num_steps} steps of batches of {batch_size}")

# %% [markdown]
# ## The problems
# - **gaussian**: N(m1, S1) onto N(m2, S2), random means and covariances with eigenvalues from
#   1/4 to 4. The optimal map is affine, T*(x) = m2 + A(x - m1) with A = S1^{-1/2} (S1^{1/2} S2
#   S1^{1/2})^{1/2} S1^{-1/2}, and W2^2 is known in closed form.
# - **brenier**: N(0, I) pushed through the gradient of phi(x) = |x|^2/4 + logsumexp_k (x^T Q_k x
#   / 2 + b_k.x), a convex potential with four components: a skewed, several-lobed target whose
#   optimal map is grad phi exactly (Brenier's theorem).
# - **disks** (2-d): the uniform unit disk onto four uniform disks of radius 1/2 centred at
#   (+-2, +-2): no closed-form map, judged against the exact assignment of 500 source points to
#   500 target points.
#
# ## Every method on the problems with a known map

# %%
fit_kwargs = dict(num_steps=num_steps, batch_size=batch_size, learning_rate=learning_rate, hidden=hidden)
comparison = recipes.compare(problems, methods, seeds, num_points=num_points, **fit_kwargs)
disks = {"disks 2-d": recipes.make_problem("disks", 2)} if disks_methods else {}
if disks:
    comparison = recipes.merge(comparison, recipes.compare(disks, disks_methods, seeds, num_points=num_points,
                                                           **fit_kwargs))
results = comparison.results
rows = recipes.table(results)
print(f"{'problem':14s} {'method':32s} {'L2-UVP %':>9s} {'cost/W2^2':>9s} {'W2':>7s} {'floor':>7s}")
for (label, method), r in rows.items():
    m = r["mean"]
    print(f"{label:14s} {method:32s} {m.l2_uvp:9.2f} {m.cost_ratio:9.3f} {m.w2:7.3f} {m.floor:7.3f}")

# %% [markdown]
# Read the columns as: the L2 unexplained variance (100 E|T(x) - T*(x)|^2 / Var(nu): 0 for the
# optimal map, 100 for mapping everything to nu's mean; on the disks, T* is the exact
# assignment of a sample, whose own noise keeps this above 0), the map's transport cost over
# W2^2 (1 for the optimal map: below 1 the map stops short of nu, above it moves mass further
# than needed), and W2 between 500 mapped points and 500 target points by exact assignment,
# next to the floor W2 between two independent target samples (what a perfect map scores).

# %%
fig = transport_plots.uvp_table(rows, list(problems) + list(disks), list(dict.fromkeys(methods + disks_methods)))
workbench.save_figure(fig, "uvp_table")
plt.show()

# %% [markdown]
# The maps themselves on the first 2-d problem of each kind, first seed: grey is the target
# sample, blue the mapped source, red arrows join a few source points to their images. A map
# can cover the target (its W2 near the floor) and still be far from the optimal map: look at
# where the arrows go, not only at where the points land.

# %%
for label in [lbl for lbl in list(problems) + list(disks) if lbl.endswith(" 2-d")]:
    p = {**problems, **disks}[label]
    shown = [m for m in (methods if label in problems else disks_methods)]
    drawn = recipes.draw(p, {m: comparison.fitted[(label, m)] for m in shown}, seeds[0], num_points)
    fig = transport_plots.maps(drawn, title=f"{label}: where each map sends the source (seed {seeds[0]})")
    workbench.save_figure(fig, f"maps_{label.split()[0]}")
    plt.show()

# %% [markdown]
# ## Claims and their controls
# Each claim is a margin, threshold minus the worst L2-UVP over the 2-d problems with a known
# map (mean over seeds): positive when the method recovers the optimal map everywhere. Its
# control is the same method broken in one place, which must come out negative: one Sinkhorn
# iteration instead of a converged plan, the plan read the wrong way round (P^T), flow matching
# with independent instead of OT-coupled pairs, and on the disks the flow without its cost
# term.

# %%
two_d = [lbl for lbl in problems if lbl.endswith(" 2-d")]


def margin(method, threshold=uvp_threshold, labels=two_d):
    return threshold - max(rows[(lbl, method)]["mean"].l2_uvp for lbl in labels)


claims = {}
if {"Sinkhorn regression", "control: 1-iteration Sinkhorn", "control: transposed plan"} <= set(methods):
    claims.update(sinkhorn_regression_margin=margin("Sinkhorn regression"),
                  control_one_iteration_margin=margin("control: 1-iteration Sinkhorn"),
                  control_transposed_plan_margin=margin("control: transposed plan"))
if {"flow matching, exact OT", "flow matching, independent"} <= set(methods):
    claims.update(flow_matching_ot_margin=margin("flow matching, exact OT"),
                  control_independent_coupling_margin=margin("flow matching, independent"))
if {"1-NN flow", "1-NN flow + cost"} <= set(disks_methods):
    claims.update(cost_term_margin=margin("1-NN flow + cost", disks_threshold, ["disks 2-d"]),
                  control_no_cost_term_margin=margin("1-NN flow", disks_threshold, ["disks 2-d"]))
for name, value in claims.items():
    print(f"{name:40s} {value:+8.2f}")

# %% [markdown]
# What to take from the table and the figures, and what not:
# - The supervised reduction and flow matching with exact-OT pairs sit within a few percent of
#   the optimal map; the entropic map (no network at all) is the most accurate. Regressing on
#   batch barycentric projections shrinks the map a little (its cost ratio is below 1 on the
#   Brenier problem): each batch's entropic plan averages over several targets.
# - Flow matching with **independent** pairs reaches the target distribution (its W2 sits at
#   the floor) yet is far from the optimal map on the Gaussian problem: a push-forward is not an
#   optimal map, which is why the L2-UVP column, not W2, is the test here.
# - One Sinkhorn iteration sends every point towards its nearest targets (the map collapses
#   inward, cost ratio far below 1); the transposed plan sends x_i where y_i's row points, a
#   map unrelated to x.
# - On the disks, the 1-NN flow without a cost term **collapses** onto some of the four disks
#   (each T(x) chases its nearest target, nothing pulls mass to the far disks). With the cost
#   term the four-fold structure stays, but the map stops short of the disks (cost ratio near
#   0.3 at this training length): the cost term prevents the collapse; it does not by itself
#   make the heuristic near-optimal here. The prototype note in the issue reported it
#   near-optimal; we do not reproduce that in the quick profile.
# - "not moving" (T(x) = x) is the baseline every learnt map should beat; the 1-NN flow does not
#   always beat it.
# - In 8 and 32 dimensions (the full profile) every method degrades at this training length
#   (1000 steps of 128-point batches): flow matching with OT pairs degrades least, the
#   entropic map (1024 samples) and the Monge gap most, and the batch-level estimators
#   (Sinkhorn regression, the Seguy dual) shrink the map (cost ratio well below 1). In 32-d the
#   W2-against-floor column stops discriminating: two 1000-point samples of the same
#   distribution are about as far apart as a poor map's output is from the target. The claims
#   are therefore made on the 2-d problems only.

# %% [markdown]
# ## Headline numbers

# %%
workbench.record(
    seeds=seeds,
    table={f"{label} | {method}": {"mean": r["mean"]._asdict(), "spread": r["spread"]._asdict()}
           for (label, method), r in rows.items()},
    per_seed={f"{label} | {method}": [row._asdict() for row in rs] for (label, method), rs in results.items()},
    **claims,
)

# %% [markdown]
# ## Explore
# With `interactive=True`: pick a problem and a method, train it, and see where it sends the
# source; the history keeps each run's scores.

# %%
if interactive:
    import functools

    from IPython.display import display

    from workbench.ui.transport import transport_panel

    explore = functools.partial(recipes.explore, {**problems, **disks}, batch_size=batch_size,
                                learning_rate=learning_rate, hidden=hidden)
    panel = transport_panel(explore, list({**problems, **disks}), list(recipes.METHODS), num_steps=num_steps)
    display(panel.widget)
