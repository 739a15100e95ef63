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
#       summary/MLP 64-32-10/bound_over_linear: <0.9
#       summary/MLP 64-32-10/loss_over_same_area: <0.95
#       summary/MLP 64-32-10/warmup_fraction: '>0.15'
#       summary/logistic regression/bound_over_linear: <0.9
#       summary/logistic regression/loss_over_linear: <0.95
#       summary/logistic regression/warmup_fraction: '>0.15'
#     controls:
#       summary/MLP 64-32-10/cosine_bound_over_linear: summary/MLP 64-32-10/bound_over_linear
#       summary/MLP 64-32-10/cosine_loss_over_linear: summary/MLP 64-32-10/loss_over_same_area
#       summary/MLP 64-32-10/unrefined_bound_over_linear: summary/MLP 64-32-10/bound_over_linear
#       summary/MLP 64-32-10/unrefined_warmup_fraction: summary/MLP 64-32-10/warmup_fraction
#       summary/logistic regression/cosine_bound_over_linear: summary/logistic regression/bound_over_linear
#       summary/logistic regression/cosine_loss_over_linear: summary/logistic regression/loss_over_linear
#       summary/logistic regression/unrefined_bound_over_linear: summary/logistic regression/bound_over_linear
#       summary/logistic regression/unrefined_warmup_fraction: summary/logistic regression/warmup_fraction
#     full:
#       num_steps: 5000
#       peak_lrs:
#       - 0.25
#       - 0.5
#       - 1.0
#       - 2.0
#     quick_seconds: 40
#     summary: A learning-rate schedule refined from the gradient norms of a first run
#     title: Refined learning-rate schedules from gradient norms (Defazio et al. 2023)
# ---

# %% [markdown]
# # Refining a schedule from the gradient norms of a previous run
#
# **Claim** (Defazio, Cutkosky, Mehta, Mishchenko 2023). The last-iterate bound of SGD depends on
# the schedule and the gradient norms g_t only. Minimising it for the norms seen in a previous run
# gives the *refined* schedule eta_t ~ w_t sum_{p>t} w_p with w_t = 1/g_t^2 (after a median
# filter). With constant norms this is linear decay; with real norms, which are large at the
# start and change during training, the refined schedule grows a **warm-up** and an **annealing**
# phase by itself, and the paper reports equal or lower final loss than linear decay or cosine.
#
# You will see: gradient norms from SGD runs of logistic regression and of a 64-32-10 MLP on
# digits, the refined schedules they produce, and the final training loss and test accuracy of
# SGD with the refined schedule against linear decay and cosine at the same peak step size, and
# against linear decay given the refined schedule's total step size (its area).

# %% tags=["parameters"]
num_steps: int = 1000  # SGD steps (minibatches of batch_size); in [1, inf)
batch_size: int = 32  # examples per step; in [1, inf)
peak_lrs: list[float] = [1.0]  # peak learning rates tried; each schedule is scored at its best; in (0, inf)
tau: float = 0.1  # median-filter window as a fraction of the run; in (0, 1]
seed: int = 0  # data split, initialisation and batch order; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: model, T, peak lr, window -> refined schedule

# %%
import matplotlib.pyplot as plt

import workbench
from workbench import plots
from workbench.experiments import schedules as refinement

# %% [markdown]
# ## Runs: linear decay first, then refine and compare
# For each model and peak step size, `digits_refinement` trains with SGD + linear decay while
# recording sqrt(E ||g_t||^2) (8 random minibatches every 10 steps), refines those norms into a
# schedule, and trains again from the same initialisation and batch order with the refined schedule,
# linear decay and cosine, all at the same peak step size, and with linear decay scaled to the
# refined schedule's area (sum of learning rates), which tells a gain of the refined *shape* from
# a gain of its larger step budget.

# %%
models = {"logistic regression": "logreg", "MLP 64-32-10": "mlp"}
results = {label: {lr: refinement.digits_refinement(kind, num_steps=num_steps, peak_lr=lr, batch_size=batch_size,
                                                   seed=seed, tau=tau)
                   for lr in peak_lrs}
           for label, kind in models.items()}

# best peak per schedule (the tuned comparison); the norms are shown for the middle peak
best = {label: refinement.best_runs(by_lr) for label, by_lr in results.items()}
shown = {label: by_lr[peak_lrs[len(peak_lrs) // 2]] for label, by_lr in results.items()}

# %% [markdown]
# ## Gradient norms and the refined schedule
# Top: the estimated gradient norm per step (raw, and after the median filter). Bottom: the
# refined schedule against linear decay and cosine. Look for the emergent **warm-up**: early
# gradients are large, so early steps are expensive in the bound and the refined schedule starts
# low; and for the **anneal**: it decays to zero, faster than linear where the norms rise or flatten.

# %%
fig = plots.schedules.norms_and_schedules(shown, tau)
workbench.save_figure(fig, "norms_and_schedules")
plt.show()

# %% [markdown]
# ## Training with each schedule
# Minibatch training loss (smoothed) per schedule. The refined schedule trails for most of the run
# (warm-up: smaller early steps) and catches up in its annealing phase. In the quick profile it
# ends with a lower full-batch training loss for logistic regression (about 11% lower) and 2-9%
# lower for the MLP, with test accuracy unchanged within about half a percent: on digits the gain
# is in optimisation, not in generalisation. Caveats: at the same peak, the refined schedule has a
# larger total step size (area, about 0.62-0.64 T against linear decay's 0.5 T): "linear decay
# (same area)" shows what that budget alone buys (for logistic regression, all of the gain). Its
# norms come from a noisy estimate (8 minibatches every 10 steps), hence its jagged shape;
# `peak_lrs` in the full profile scores each schedule at its own best peak.

# %%
fig = plots.schedules.schedule_losses(shown, window=max(1, num_steps // 50))
workbench.save_figure(fig, "training_loss")
plt.show()

print(f"{'model':22s} {'schedule':14s} {'final train loss':>17s} {'test acc':>9s}")
for label, runs in best.items():
    for name, run in runs.items():
        print(f"{label:22s} {name:14s} {run.final_loss:17.4f} {run.test_accuracy:9.3f}")

# %% [markdown]
# ## Headline numbers
# Final full-batch training loss and test accuracy per model and schedule (each at its best peak
# learning rate among `peak_lrs`), and `summary` per model (`experiments.schedules.refinement_summary`,
# at the middle peak), on which the claims rest:
# - **warm-up**: the refined schedule peaks after 15% of the run (seeds 0-2: 28-41% for logistic
#   regression, 54-70% for the MLP); the control, refinement of constant norms, is linear decay and
#   peaks at step 0;
# - **bound**: for the norms it was refined from, its last-iterate bound is below 0.9 times linear
#   decay's (0.77-0.82 and 0.50-0.67); cosine (about 1.05) and the control (1.00) are not;
# - **loss**: at the same peak, logistic regression ends about 11% lower than with linear decay
#   (cosine: 0.2% lower). But linear decay given the refined schedule's area matches it (ratio
#   about 1.003): for logistic regression the gain is the larger step budget, not the shape. For
#   the MLP the same-peak gain is small and seed-dependent (2-9%), while the refined schedule beats
#   linear decay *of the same area* by 9-10% (cosine against linear decay, a same-area reshaping
#   that is not refined: within 1.3%). That MLP claim is the one that credits the refined shape.

# %%
summary = {label: refinement.refinement_summary(res) for label, res in shown.items()}
workbench.record(
    final_train_loss={label: {name: run.final_loss for name, run in runs.items()}
                      for label, runs in best.items()},
    test_accuracy={label: {name: run.test_accuracy for name, run in runs.items()}
                   for label, runs in best.items()},
    refined_peak_fraction={label: s.warmup_fraction for label, s in summary.items()},
    summary={label: s._asdict() for label, s in summary.items()},
)

# %% [markdown]
# ## Explore
# With `interactive=True`: refine a schedule for another model, horizon, peak learning rate or
# filter window: the panel trains with linear decay, reads its gradient norms, refines, and trains
# again with cosine and the refined schedule (`experiments.schedules.digits_refinement`).

# %%
if interactive:
    import functools

    from IPython.display import display

    from workbench.ui.schedules import refinement_panel

    panel = refinement_panel(functools.partial(refinement.digits_refinement, batch_size=batch_size, seed=seed),
                             num_steps=300, peak_lr=peak_lrs[0], tau=tau)
    display(panel.widget)
