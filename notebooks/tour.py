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
#       test_accuracy: '>0.93'
#     controls:
#       control_untrained_test_accuracy: test_accuracy
#     full:
#       hidden_size: 128
#       steps: 3000
#     quick_seconds: 15
#     title: A tour of the workbench - train an MLP on digits
# ---

# %% [markdown]
# # A tour of the workbench
#
# The smallest complete paper: train a one-hidden-layer MLP on scikit-learn's 8x8 digits
# with Adam, look at its loss curve, and record its test accuracy. It shows the shape every
# paper in this repository has: a **parameters** cell (rerun it with
# `python -m workbench run tour -p learning_rate=0.003`), one package call per step,
# figures saved to the run directory, and headline numbers recorded with `workbench.record`.
#
# **Claim.** Even a tiny MLP (64-32-10, 2.4k parameters) reaches about 95% test accuracy on
# digits within a few hundred steps; the learning rate decides how fast and how noisily. The
# control is the same model before its first step (chance level, about 10%): a training loop
# that never updated the parameters would fail the claim.

# %% tags=["parameters"]
hidden_size: int = 32  # width of the hidden layer; in [1, inf)
learning_rate: float = 0.01  # Adam step size; in (0, inf)
steps: int = 400  # optimisation steps (minibatches of 128); in [1, inf)
compare_learning_rates: list[float] = [0.001, 0.01, 0.1]  # step sizes for the comparison plot; in (0, inf)
seed: int = 0  # data split, initialisation and batch order; in [0, inf)
profile: str = "quick"  # quick (CI-sized) or full (paper-sized); in {quick, full}
interactive: bool = False  # show the panel: hidden size, learning rate, steps -> loss curve

# %%
import matplotlib.pyplot as plt

import workbench
from workbench import plots, ui
from workbench.experiments import digits

# %% [markdown]
# ## Train
# `fit_digits_mlp` loads the digits split for `seed`, builds the MLP with Flax NNX, turns it into
# pure functions of a params pytree, and trains with a jit-compiled optax loop.

# %%
fit = digits.fit_digits_mlp(hidden_size, learning_rate, steps, seed=seed)
untrained_accuracy = digits.untrained_test_accuracy(fit, seed)
print(f"final minibatch loss {fit.result.history['loss'][-1]:.4f}, test accuracy {fit.test_accuracy:.3f} "
      f"(untrained: {untrained_accuracy:.3f})")

# %% [markdown]
# ## Loss curve
# The faint line is the per-step minibatch loss, the solid one its moving average. Look for a
# steady fall on the log scale; a curve that flattens early means the step size is too small, one
# that jumps up means it is too large.

# %%
fig = plots.training.loss_curves({f"lr={learning_rate}": fit.result.history})
workbench.save_figure(fig, "loss_curve")
plt.show()

# %% [markdown]
# ## The learning rate decides the speed
# The same model and data at several step sizes. The interactive version (plotly) lets you hover
# over the curves (shown below the static plot); it is saved as HTML in the run directory, sharing one
# plotly.js with the run's other interactive figures.

# %%
# the run above is reused for its own step size
fits = {lr: fit if lr == learning_rate else digits.fit_digits_mlp(hidden_size, lr, steps, seed=seed)
        for lr in compare_learning_rates}
histories = {f"lr={lr}": f.result.history for lr, f in fits.items()}
fig = plots.training.loss_curves(histories)
workbench.save_figure(fig, "learning_rates")
plt.show()
figly = plots.training.loss_curves_plotly(histories)
workbench.show(figly, "learning_rates_interactive")  # hover for each curve's values
for lr, f in fits.items():
    print(f"lr={lr:<6} test accuracy {f.test_accuracy:.3f}")

# %% [markdown]
# ## Explore
# With `interactive=True` (or when you open this notebook in JupyterLab and set it), a panel
# lets you retrain with another hidden size, learning rate and number of steps.

# %%
if interactive:
    panel = ui.training_panel(digits.fit_digits_mlp, hidden_size, learning_rate, steps)
    display(panel.widget)  # noqa: F821 (IPython builtin)

# %% [markdown]
# ## Headline numbers

# %%
workbench.record(
    test_accuracy=fit.test_accuracy,
    control_untrained_test_accuracy=untrained_accuracy,
    final_train_loss=float(fit.result.history["loss"][-1]),
    accuracy_by_learning_rate={str(lr): f.test_accuracy for lr, f in fits.items()},
)
