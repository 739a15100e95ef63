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
#       fading_drop: '>0.1'
#       peak_pearson:
#         full: '>0.8'
#         quick: '>0.9'
#     controls:
#       fading_drop_random: fading_drop
#       peak_pearson_grad_dot: peak_pearson
#       peak_pearson_random: peak_pearson
#     full:
#       n_train: 1347
#       num_removed: 100
#       pretrain_steps: 3000
#       record_every: 100
#       steps: 5000
#     quick_seconds: 45
#     summary: A removed example's effect on a prediction over training, against the
#       influence estimate
#     title: Influence fades over training (Schioppa et al. 2023)
# ---

# %% [markdown]
# # Influence fades over training
#
# Schioppa, Filippova, Titov and Zablotskaia (NeurIPS 2023, "Theoretical and Practical
# Perspectives on what Influence Functions Do") argue that the influence function answers a
# *short-horizon* question. Remove a training example and keep training: the run without it and
# the run with it drift apart (parameter divergence), and the influence function's prediction of
# the effect matches the actual effect for a while and then less and less.
#
# **What you will see.** A small MLP is trained on digits; from that point we continue training
# twice for every removed example: on all the data, and on the same minibatches without the
# example. Every `record_every` steps we correlate the actual change of each test loss with the
# influence function's prediction (computed once, at the starting point), and measure how far
# the two runs' parameters are apart. Look for a curve that rises (the removal's effect builds
# up toward what the influence function predicts) and then falls while the divergence keeps
# growing. Gradient dot products (TracIn's one-checkpoint form, no curvature) are shown for
# comparison; they fade too, from a much lower level.
#
# **What is claimed, and what must fail it.** The finding is relative: the influence function's
# agreement with the actual effect peaks high (`peak_pearson` > 0.9; > 0.8 on the full profile,
# whose 1347 examples and 100 removals peak at about 0.86) and then *drops*
# (`fading_drop`, the peak minus the last value, > 0.1; 0.17 to 0.29 on seeds 0-2 of the quick
# profile). Controls that must fail: the gradient dot product's peak (no curvature: about 0.5 to
# 0.7), and random predictions scored against the same actual effects, whose curve stays flat
# near 0 (peak and drop both below 0.05).

# %% tags=["parameters"]
n_train: int = 300  # training examples (a subset of digits); in [1, 1347]
n_test: int = 40  # test points whose loss changes are tracked; in [1, 450]
hidden: int = 16  # width of the MLP's hidden layer; in [1, inf)
pretrain_steps: int = 1000  # SGD steps before the removal; in [1, inf)
num_removed: int = 20  # training examples removed, each in its own run; in [1, inf)
steps: int = 2000  # training steps after the removal; in [1, inf)
record_every: int = 100  # compare predicted and actual every this many steps; in [1, inf)
learning_rate: float = 0.5  # SGD step size (before and after the removal); in (0, inf)
batch_size: int = 32  # minibatch size; in [1, inf)
l2: float = 0.0001  # L2 regularisation; in [0, inf)
damping_margin: float = 0.01  # damping above -lambda_min that makes H + damping I positive definite; in (0, inf)
seed: int = 0  # data split, initialisation and batch order; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: removal and test point -> effect over training

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import workbench
from workbench import influence, models, plots, train
from workbench.experiments.influence import digits_subsets
from workbench.experiments.influence_claims import fading_drop, random_scores
from workbench.influence import validation

jax.config.update("jax_enable_x64", True)

# %% [markdown]
# ## Train the MLP to the point of removal

# %%
train_set, test_set = digits_subsets(n_train, n_test, seed)
model = models.functional(models.MLP(64, [hidden], 10, rngs=nnx.Rngs(seed), param_dtype=jnp.float64), l2=l2)
run = train.train(model.loss_fn, model.params, train_set, jax.random.key(seed), optimizer=optax.sgd(learning_rate), num_steps=pretrain_steps, batch_size=batch_size)
params = run.params
print(f"test accuracy at the removal point: {models.accuracy(model.predict_fn, params, test_set):.3f}")

# %% [markdown]
# ## Influence at the removal point
# The network is not convex: the Hessian has small negative eigenvalues, so the influence function
# uses H + damping I with the damping just above -lambda_min (explicit, printed below).

# %%
choice = influence.damping_above_min_eigenvalue(model.loss_fn, params, train_set, margin=damping_margin)
damping = choice.damping
print(f"Hessian eigenvalues in [{choice.lambda_min:.2e}, {float(choice.eigen[0][-1]):.2e}]; damping = {damping:.3g}")
exact = influence.make("exact", model.loss_fn, params, train_set, damping=damping, hessian=choice.eigen)
dot = influence.make("grad_dot", model.loss_fn, params, train_set)
removed = np.linspace(0, n_train - 1, num_removed).astype(int)
predicted = validation.predicted_loo_effects(exact.scores(test_set), removed)
predicted_dot = np.asarray(dot.scores(test_set))[:, removed]

# %% [markdown]
# ## Keep training, with and without each example

# %%
result = validation.fading(model.loss_fn, params, train_set, jax.random.key(seed + 1), test_set, removed, predicted,
                           optimizer=optax.sgd(learning_rate), num_steps=steps, record_every=record_every,
                           batch_size=batch_size)
pearson_dot = validation.fading_correlations(predicted_dot, result.actual).pearson
chance = random_scores(jax.random.fold_in(jax.random.key(seed), 2), *predicted.shape)  # the control: no information
pearson_random = validation.fading_correlations(chance, result.actual).pearson
for t, p, s, d, pd, pr in zip(result.steps, result.pearson, result.spearman, result.divergence, pearson_dot, pearson_random):
    print(f"step {t:5d}: IF Pearson {p:.3f}  Spearman {s:.3f}  grad-dot Pearson {pd:.3f}  random {pr:+.3f}  "
          f"divergence {d:.2e}")
peak = validation.fading_peak(result)
workbench.record(
    fading_steps=result.steps, fading_pearson=np.round(result.pearson, 4), fading_spearman=np.round(result.spearman, 4),
    fading_divergence=result.divergence, fading_pearson_grad_dot=np.round(pearson_dot, 4),
    fading_pearson_random=np.round(pearson_random, 4),
    peak_pearson=peak.peak_pearson, peak_step=peak.peak_step, final_pearson=peak.final_pearson, damping=damping,
    fading_drop=fading_drop(result.pearson), fading_drop_random=fading_drop(pearson_random),
    peak_pearson_grad_dot=float(np.max(pearson_dot)), peak_pearson_random=float(np.max(pearson_random)),
)

# %% [markdown]
# ## The fading curve
# Left axis: how well the influence function (and the gradient dot product) predicts the actual
# effect of each removal, as training continues after it. Right axis: the mean distance between
# the parameters of the run without the example and the run with all of them. The influence
# function is a statement about one point of the trajectory; the further the runs drift, the less
# it says about the run without the example.

# %%
fig = plots.influence.fading(result.steps, result.pearson, result.spearman, pearson_dot, result.divergence)
workbench.save_figure(fig, "fading")
plt.show()

# %% [markdown]
# ## Explore
# With `interactive=True`: pick a removed example and a test point and follow its actual effect
# over training against the (constant) prediction; the panel redraws when a slider is released.

# %%
if interactive:
    from IPython.display import display

    from workbench.ui import influence as influence_ui

    panel = influence_ui.fading_panel(result.steps, result.actual, predicted, removed)
    panel.run()
    display(panel.widget)

