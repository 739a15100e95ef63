"""Learning the mix of objectives during training: bandits over tasks and a loop that lets them choose.

- `bandits`: pure bandits on a state pytree, usable inside `lax.scan`: Exp3.S as Graves et al.
  (2017) define it for automated curricula, a moving-average variant (tasks drawn in proportion
  to a moving average of their rewards, our reading of Schioppa, Garcia and Firat 2023), and
  static mixtures; Graves et al.'s quantile rescaling of rewards, shared or per task;
- `training`: `ObjectiveTasks` (token sequences with a weight per target position, so a
  translation task scores only its target side), `weighted_token_loss`, and `train_mixture`, one
  compiled loop in which the bandit draws each step's task and is rewarded by the loss reduction
  the step brought on a fresh batch of that task (the self-prediction gain).
The languages, parallel pairs and probe sets of the paper are built in
`workbench.experiments.mixing_languages`, its runs in `workbench.experiments.mixing`.

Examples:
    Exp3.S over two tasks, where task 1 always brings the larger loss reduction: its probability
    grows from one half.

    >>> import jax.numpy as jnp
    >>> from workbench import mixing
    >>> bandit = mixing.exp3s(2, eta=0.1, window=20)
    >>> state = bandit.init()
    >>> for t in range(200):
    ...     probs = bandit.probabilities(state)
    ...     task = t % 2
    ...     state = bandit.update(state, task, jnp.asarray(0.1 * task + 0.01 * (t % 7)), probs)
    >>> bool(bandit.probabilities(state)[1] > 0.6)
    True
"""

from workbench.mixing import bandits, training
from workbench.mixing.bandits import Bandit, BanditState, exp3s, moving_average, rescale, static
from workbench.mixing.training import (
    REWARDS,
    MixtureResult,
    ObjectiveTasks,
    stack_objectives,
    train_mixture,
    translation_share,
    weighted_token_accuracy,
    weighted_token_loss,
)

__all__ = [
    "Bandit", "BanditState", "exp3s", "moving_average", "static", "rescale", "ObjectiveTasks", "stack_objectives",
    "weighted_token_loss", "weighted_token_accuracy", "train_mixture", "MixtureResult", "translation_share",
    "REWARDS", "bandits", "training",
]
