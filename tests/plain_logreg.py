"""The influence tests' model: L2-regularised multinomial logistic regression on a digits subset,
written as plain jnp functions of {"w", "b"} (cheap to trace; safe under strict promotion)."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from workbench import data
from workbench.influence import validation as ev


class PlainLogReg(NamedTuple):
    predict_fn: Callable
    output_loss_fn: Callable
    loss_fn: Callable


def plain_logreg(l2: float) -> PlainLogReg:
    def predict_fn(params, x):
        return x @ params["w"] + params["b"]

    def output_loss_fn(logits, y):
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]

    def loss_fn(params, batch):
        x, y = batch
        reg = jnp.sum(params["w"] ** 2) + jnp.sum(params["b"] ** 2)
        return jnp.mean(output_loss_fn(predict_fn(params, x), y)) + 0.5 * l2 * reg

    return PlainLogReg(predict_fn, output_loss_fn, loss_fn)


def fitted_digits(model: PlainLogReg, n_train: int, n_test: int):
    """(params at the optimum, train subset, test subset), float64."""
    jax.config.update("jax_enable_x64", True)
    train, test = data.load_digits(dtype=jnp.float64)
    train, test = train.take(np.arange(n_train)), test.take(np.arange(n_test))
    params, _ = ev.fit(model.loss_fn, {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}, train)
    return params, train, test
