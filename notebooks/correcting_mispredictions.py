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
#       damage: <0.01
#       fix_rate: '>0.3'
#       fix_rate_gap: '>0.25'
#     controls:
#       damage_unlearning: damage
#       fix_rate_gap_random_scores: fix_rate_gap
#       fix_rate_random: fix_rate
#     full:
#       n_test: 450
#       n_train: 1347
#     quick_seconds: 40
#     summary: Fix wrong predictions by fine-tuning on the few training examples influence
#       points to
#     title: Correcting mispredictions with a few fine-tuning steps (Schioppa et al.
#       2023)
# ---

# %% [markdown]
# # Correcting mispredictions with influence functions
#
# Schioppa et al. (NeurIPS 2023) conclude that although influence fades over long retraining,
# influence functions remain useful for *debugging*: for a mispredicted test point, take a few
# fine-tuning steps that remove (or down-weight) its most influential harmful training examples,
# and the misprediction is often fixed, far more often than by removing as many random examples,
# with little damage to the other test points.
#
# **What you will see.** A logistic regression on digits; for each mispredicted test point we
# fine-tune from the trained model for `steps` full-batch SGD steps with its k strongest
# opponents (most negative exact influence) re-weighted, and separately with k random training
# examples re-weighted the same way. Plotted: the fix rate against k for both, and the accuracy
# lost on the other test points. With `weight=-1` or below the selected examples are unlearned
# (gradient ascent on them) instead of removed: fewer steps fix as much, at more damage.

# %% tags=["parameters"]
n_train: int = 700  # training examples (a subset of digits); in [1, 1347]
n_test: int = 450  # test points (the mispredicted ones are corrected); in [1, 450]
l2: float = 0.001  # L2 regularisation of the logistic regression; in [0, inf)
k_values: list[int] = [20, 40]  # numbers of training examples re-weighted; in [1, inf)
steps: int = 50  # fine-tuning steps (full-batch SGD); in [1, inf)
learning_rate: float = 3.0  # fine-tuning step size; in (0, inf)
weight: float = 0.0  # new weight of the selected examples: 0 removes them, -1 unlearns them; in [-10, 1]
control_weight: float = -10.0  # the damage control: the opponents unlearned this hard (at the largest k); in [-100, 0]
seed: int = 0  # data split and the random baseline; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: k, steps, weight -> mispredictions fixed

# %%
import jax
import matplotlib.pyplot as plt

import workbench
from workbench import influence, models, plots
from workbench.experiments.influence import fit_digits_logistic
from workbench.experiments.influence_claims import fix_rate_gap, random_scores
from workbench.influence import validation

jax.config.update("jax_enable_x64", True)

# %% [markdown]
# ## The model and its mistakes

# %%
model, params, train_set, test_set, _ = fit_digits_logistic(n_train, n_test, l2, seed)
accuracy = models.accuracy(model.predict_fn, params, test_set)
print(f"test accuracy {accuracy:.3f}: {round((1 - accuracy) * n_test)} mispredicted test points")

# %% [markdown]
# ## Influence of every training example on every test point
# Exact influence (dense inverse Hessian). The opponents of a mispredicted test point are the
# training examples whose removal would lower its loss the most.

# %%
scores = influence.make("exact", model.loss_fn, params, train_set).scores(test_set)

# %% [markdown]
# ## Fine-tune without the opponents, and without random examples

# %%
def correct(k, scores=scores, weight=weight):
    return validation.correct_mispredictions(model.loss_fn, model.predict_fn, params, train_set, jax.random.key(seed),
                                             test_set, scores, k=k, num_steps=steps, learning_rate=learning_rate,
                                             weight=weight)


results = {k: correct(k) for k in k_values}
for k, r in results.items():
    print(f"k={k:3d}: fixed {r.fix_rate:.2f} (random {r.fix_rate_random:.2f}); accuracy lost on the "
          f"other test points {r.damage:+.4f} (random {r.damage_random:+.4f})")

# %% [markdown]
# ## Controls: what a broken method does
# The claims are that the influence-chosen examples fix a good fraction of the mispredictions
# (`fix_rate`), many more than as many random examples (`fix_rate_gap`, per k), and cost the other
# test points almost nothing (`damage`). Each must be failed by a broken variant: the random
# selection's own fix rate (`fix_rate_random`); the same pipeline fed random scores instead of
# influence (`fix_rate_gap_random_scores`: a random pick against a random pick); and fine-tuning
# that unlearns the opponents `control_weight` times over instead of removing them
# (`damage_unlearning`: it fixes by wrecking the model).

# %%
chance = random_scores(jax.random.fold_in(jax.random.key(seed), 1), *scores.shape)
gaps_chance = [fix_rate_gap(correct(k, scores=chance)) for k in k_values]
overshoot = correct(k_values[-1], weight=control_weight)
print(f"random scores: fix-rate gaps {gaps_chance}; unlearning with weight {control_weight}: "
      f"fixed {overshoot.fix_rate:.2f}, accuracy lost on the other test points {overshoot.damage:+.4f}")
workbench.record(
    k_values=k_values, num_mispredicted=len(results[k_values[0]].mispredicted),
    fix_rate=[r.fix_rate for r in results.values()], fix_rate_random=[r.fix_rate_random for r in results.values()],
    fix_rate_gap=[fix_rate_gap(r) for r in results.values()], fix_rate_gap_random_scores=gaps_chance,
    damage=[r.damage for r in results.values()], damage_random=[r.damage_random for r in results.values()],
    damage_unlearning=overshoot.damage,
)

# %% [markdown]
# ## Fix rate and damage
# Left: the fraction of mispredicted test points that the fine-tuning fixes, for the influential
# opponents and for random examples. The gap is the finding: the influence function knows
# which few examples to touch. Right: the cost, the accuracy lost on the other test points
# (negative = they improved).

# %%
fig = plots.influence.fix_rate(k_values, results.values())
workbench.save_figure(fig, "fix_rate")
plt.show()

# %% [markdown]
# ## Explore
# With `interactive=True`: change k, the number of fine-tuning steps and the new weight of the k
# most harmful examples (0 removes them, negative unlearns) and rerun the correction; the table
# keeps each setting's fix rate and damage against random examples.

# %%
if interactive:
    import functools

    from IPython.display import display

    from workbench.ui import influence as influence_ui

    panel = influence_ui.correction_panel(functools.partial(
        validation.correct_mispredictions, model.loss_fn, model.predict_fn, params, train_set,
        jax.random.key(seed), test_set, scores, learning_rate=learning_rate))
    display(panel.widget)

