"""A tiny class-conditional diffusion model, class forgetting for it, and the integrity metric.

The model predicts the clean image x0 from a noised one x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)
eps, the time step (sinusoidal embedding) and the class (one-hot), with an MLP: enough for 8x8
digits scaled to [-1, 1]. Sampling is deterministic DDIM (eta = 0), so the same initial noise
and class give the same image: the premise of the integrity metric of Schioppa, Hoogeboom & Heek
(2024), which compares the original and the unlearned model's samples for the same class and
the same noise. Its scale is the *noise floor*: the same distance between the original model's
samples for the same class under two independent noises (a model that kept nothing of its
retain-class behaviour would sit there).

Class forgetting (`forget` holds the forget class's examples, `retain` the rest; data are
(x, y) pairs with x in [-1, 1]):
- `ascent`: ascend the denoising loss on the forget class while descending it on the retain data;
- `remap`: teach the model to draw another class (`target_class`) when asked for the forget
  class, fine-tuning on the retain data meanwhile;
- `remap_distill`: the same remapping, but on the retain classes the targets are the original
  model's own predictions (distillation) rather than the data.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from workbench.core.numerics import check_positive_int
from workbench.train import optimize_streams
from workbench.unlearning.methods import Unlearned, _dtype, _finish, _positive
from workbench.unlearning.sets import check_sets

PyTree = Any


# ----------------------------------------------------------------------------- model and schedule


class Denoiser(nnx.Module):
    """x0-prediction MLP: [x_t, time embedding, class one-hot] -> hidden (SiLU) x depth -> x0."""

    def __init__(self, dim: int = 64, num_classes: int = 10, hidden: int = 256, depth: int = 2,
                 time_features: int = 32, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.num_classes, self.time_features = num_classes, time_features
        self.time = nnx.Linear(time_features, time_features, rngs=rngs, param_dtype=param_dtype)
        sizes = [dim + time_features + num_classes] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(hidden, dim, rngs=rngs, param_dtype=param_dtype,
                              kernel_init=nnx.initializers.zeros)

    def __call__(self, x_t, t, labels):
        half = self.time_features // 2
        freqs = jnp.exp(-math.log(1000.0) * jnp.arange(half, dtype=x_t.dtype) / half)
        angles = t.astype(x_t.dtype)[:, None] * 1000.0 * freqs[None]
        temb = jax.nn.silu(self.time(jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)))
        h = jnp.concatenate([x_t, temb, jax.nn.one_hot(labels, self.num_classes, dtype=x_t.dtype)], axis=1)
        for layer in self.layers:
            h = jax.nn.silu(layer(h))
        return self.out(h)


class Model(NamedTuple):
    """A denoiser as a params pytree and `apply_fn(params, x_t, t, labels) -> x0 prediction`,
    with `t` the time in [0, 1]."""

    params: PyTree
    apply_fn: Callable


def denoiser(key: jax.Array, dim: int = 64, num_classes: int = 10, hidden: int = 256, depth: int = 2,
             param_dtype=jnp.float32) -> Model:
    """Build a `Denoiser` from `key` and split it once into pure params + apply_fn.

    Args:
      key: draws the initial weights (the output layer starts at zero).
      dim: pixels per image (64 for 8x8 digits).
      num_classes: classes the model is conditioned on.
      hidden: width of the hidden layers.
      depth: number of hidden layers.
      param_dtype: the params' dtype.

    Returns:
      `Model(params, apply_fn)`; `apply_fn` is one object per architecture, so jitted training
      and sampling compile once per shape.
    """
    module = Denoiser(dim, num_classes, hidden, depth, rngs=nnx.Rngs(key), param_dtype=param_dtype)
    graphdef, state = nnx.split(module, nnx.Param)
    params = nnx.to_pure_dict(state)

    def apply_fn(params, x_t, t, labels):
        s = jax.tree.map(lambda a: a, state)
        nnx.replace_by_pure_dict(s, params)
        return nnx.merge(graphdef, s)(x_t, t, labels)

    return Model(params, _stable(apply_fn, (dim, num_classes, hidden, depth, jnp.dtype(param_dtype).name)))


_APPLY_CACHE: dict = {}


def _stable(fn, config):
    """One apply_fn object per architecture, so jitted training/sampling compile once per shape."""
    return _APPLY_CACHE.setdefault(config, fn)


def alpha_bar(t: jax.Array) -> jax.Array:
    """Cosine schedule (Nichol & Dhariwal 2021): the signal fraction abar(t).

    abar(t) = f(t) / f(0) with f(u) = cos((u + s) / (1 + s) pi / 2)^2, s = 0.008, clipped to
    [1e-4, 1] so that the noise never swamps the signal completely.

    Args:
      t: times in [0, 1], any shape.

    Returns:
      abar(t), the shape of `t`.
    """
    s = 0.008
    f = lambda u: jnp.cos((u + s) / (1 + s) * jnp.pi / 2) ** 2
    return jnp.clip(f(t) / f(jnp.zeros_like(t)), 1e-4, 1.0)


def noised(x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """The forward process: x_t = sqrt(abar(t)) x0 + sqrt(1 - abar(t)) eps.

    Args:
      x0: clean images [n, dim].
      t: one time per image [n], in [0, 1].
      eps: standard normal noise [n, dim].

    Returns:
      The noised images x_t [n, dim].
    """
    ab = alpha_bar(t)[:, None]
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps


def _draw(key, x0):
    kt, ke = jax.random.split(key)
    t = jax.random.uniform(kt, (x0.shape[0],), x0.dtype, 1e-3, 1.0)
    return t, jax.random.normal(ke, x0.shape, x0.dtype)


def denoising_loss(apply_fn: Callable, params: PyTree, batch, key: jax.Array) -> jax.Array:
    """Mean squared error of the x0 prediction at a random time and noise per example.

    Args:
      apply_fn: `apply_fn(params, x_t, t, labels) -> x0 prediction` (a `Model`'s).
      params: the denoiser's params.
      batch: (x0 [n, dim], labels [n]).
      key: draws one time in [1e-3, 1) and one noise per example.

    Returns:
      The batch mean of ||x0_pred - x0||^2, a scalar.
    """
    x0, y = batch
    t, eps = _draw(key, x0)
    return jnp.mean(jnp.sum((apply_fn(params, noised(x0, t, eps), t, y) - x0) ** 2, axis=1))


# ----------------------------------------------------------------------------- training


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_steps", "batch_size"))
def _train(apply_fn, num_steps, batch_size, params, data, key, lr):
    schedule = optax.cosine_decay_schedule(lr, num_steps, 0.05)
    objective = lambda p, b: denoising_loss(apply_fn, p, b[0], b[1])
    return optimize_streams(objective, params, (data,), key, optimizer=optax.adam(schedule), num_steps=num_steps,
                            batch_sizes=(batch_size,), step_keys=True)


class Trained(NamedTuple):
    """A trained denoiser's params and its loss at each step [num_steps]."""

    params: PyTree
    losses: np.ndarray


def train_denoiser(model: Model, data, key: jax.Array, *, learning_rate: float = 2e-3, num_steps: int = 3000,
                   batch_size: int = 128) -> Trained:
    """Train a denoiser: Adam with cosine decay (to 5% of `learning_rate`) on the denoising loss.

    Args:
      model: the `Model` to train from (its params are the start).
      data: (x [n, dim] in [-1, 1], labels [n]).
      key: draws the minibatches, times and noise.
      learning_rate: the peak step size, positive.
      num_steps: optimisation steps, a positive int.
      batch_size: examples per step.

    Returns:
      `Trained(params, losses [num_steps])`.

    Raises:
      ValueError: on a non-positive argument.
      NonFiniteLossError: when the loss or the params become NaN/inf.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    lr = jnp.asarray(_positive(learning_rate, "learning_rate"), _dtype(model.params))
    params, losses = _train(model.apply_fn, num_steps, batch_size, model.params, data, key, lr)
    return _finish("train_denoiser", Trained(params, np.asarray(losses)), "lower learning_rate")


# ----------------------------------------------------------------------------- sampling


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_steps"))
def _ddim(apply_fn, num_steps, params, labels, noise):
    times = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=noise.dtype)

    def body(x, ts):
        t, t_next = ts
        tt = jnp.full((x.shape[0],), t)
        x0 = jnp.clip(apply_fn(params, x, tt, labels), -1, 1)
        ab, ab_next = alpha_bar(t), alpha_bar(t_next)
        eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
        return jnp.sqrt(ab_next) * x0 + jnp.sqrt(1 - ab_next) * eps, x0

    _, x0s = jax.lax.scan(body, noise, (times[:-1], times[1:]))
    return x0s[-1]


def sample(model_or_apply, params: PyTree, labels: jax.Array, noise: jax.Array, num_steps: int = 25) -> jax.Array:
    """Deterministic DDIM (eta = 0) from `noise` for class `labels`.

    Each of `num_steps` steps predicts x0 (clipped to [-1, 1]), infers the noise it implies and
    moves to the next time on a uniform grid from 1 to 0. No randomness: same noise, same labels,
    same params -> the same images (what the integrity metric needs).

    Args:
      model_or_apply: a `Model` or its `apply_fn`.
      params: the denoiser's params.
      labels: one class per image [n].
      noise: the initial noise [n, dim].
      num_steps: DDIM steps, a positive int.

    Returns:
      The last x0 prediction [n, dim], in [-1, 1].

    Raises:
      ValueError: when labels and noise differ in rows, or num_steps is not a positive int.
    """
    apply_fn = model_or_apply.apply_fn if isinstance(model_or_apply, Model) else model_or_apply
    if np.shape(labels)[0] != np.shape(noise)[0]:
        raise ValueError(f"labels and noise need one number of rows, got {np.shape(labels)[0]} and {np.shape(noise)[0]}")
    num_steps = check_positive_int("num_steps", num_steps)
    return _ddim(apply_fn, num_steps, params, jnp.asarray(labels), noise)


# ----------------------------------------------------------------------------- class forgetting


@functools.partial(jax.jit, static_argnames=("apply_fn", "kind", "num_steps", "batch_size"))
def _forget(apply_fn, kind, num_steps, batch_size, params, forget, retain, remapped, key, lr, weight):
    teacher = params

    def objective(p, b):
        f, r, m, k = b
        k1, k2, k3 = jax.random.split(k, 3)
        if kind == "ascent":
            return denoising_loss(apply_fn, p, r, k1) - weight * denoising_loss(apply_fn, p, f, k2)
        remap = denoising_loss(apply_fn, p, m, k2)
        if kind == "remap":
            return denoising_loss(apply_fn, p, r, k1) + weight * remap
        x0, y = r  # distillation: match the original model's prediction on noised retain data
        t, eps = _draw(k3, x0)
        xt = noised(x0, t, eps)
        target = jax.lax.stop_gradient(apply_fn(teacher, xt, t, y))
        return jnp.mean(jnp.sum((apply_fn(p, xt, t, y) - target) ** 2, axis=1)) + weight * remap

    return optimize_streams(objective, params, (forget, retain, remapped), key, optimizer=optax.adam(lr),
                            num_steps=num_steps, batch_sizes=(batch_size,) * 3, step_keys=True)


FORGETTING = ("ascent", "remap", "remap_distill")


def forget_class(kind: str, model: Model, params: PyTree, forget, retain, key: jax.Array, *,
                 learning_rate: float = 1e-3, num_steps: int = 300, batch_size: int = 128,
                 weight: float = 1.0, target_class: int | None = None) -> Unlearned:
    """Make the model stop drawing the forget class by `kind` in `FORGETTING` (see the module docstring).

    Adam on the kind's objective, one minibatch of the forget set, the retain set and the remapped
    examples (retain images of `target_class` labelled as the forget class) per step.

    Args:
      kind: "ascent", "remap" or "remap_distill".
      model: the `Model` (its `apply_fn` is used).
      params: the trained denoiser's params (the start, and the teacher of "remap_distill").
      forget: (x, y) of the one class to forget.
      retain: (x, y) of the other classes.
      key: draws the minibatches, times and noise.
      learning_rate: Adam's step size, positive.
      num_steps: optimisation steps, a positive int.
      batch_size: examples per step from each set.
      weight: the weight of the forget term (ascent) or of the remapping term.
      target_class: the retain class drawn instead (remap kinds); None means the smallest retain
        class.

    Returns:
      `Unlearned(params, losses [num_steps], selected=1)` of `forget_class`.

    Raises:
      ValueError: on an unknown kind, bad sets (several forget classes, a forget class in the
        retain set), a target class outside the retain classes, or a non-positive argument.
      NonFiniteLossError: when the objective or the params become NaN/inf.
    """
    if kind not in FORGETTING:
        raise ValueError(f"kind must be one of {FORGETTING}, got {kind!r}")
    check_sets(forget, retain)
    f_classes = np.unique(np.asarray(forget[1]))
    r_labels = np.asarray(retain[1])
    if np.intersect1d(f_classes, r_labels).size:
        raise ValueError(f"class forgetting needs the retain set to hold none of the forget classes {f_classes}")
    if f_classes.size != 1:
        raise ValueError(f"forget one class at a time, got classes {f_classes}")
    if target_class is None:
        target_class = int(np.min(r_labels))
    if int(target_class) not in set(r_labels.tolist()):
        raise ValueError(f"target_class={target_class} must be a retain class")
    num_steps = check_positive_int("num_steps", num_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    dt = _dtype(params)
    lr = jnp.asarray(_positive(learning_rate, "learning_rate"), dt)
    sel = r_labels == int(target_class)
    remapped = (retain[0][sel], jnp.full((int(sel.sum()),), int(f_classes[0]), dtype=retain[1].dtype))
    new, losses = _forget(model.apply_fn, kind, num_steps, batch_size, params, forget, retain,
                          remapped, key, lr, jnp.asarray(float(weight), dt))
    return _finish(f"forget_class({kind!r})", Unlearned(new, jnp.asarray(losses), jnp.ones((), dt)),
                   "lower learning_rate, weight or num_steps")
