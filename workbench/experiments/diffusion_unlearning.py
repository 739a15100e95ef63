"""Recipes for the diffusion unlearning paper: a tiny class-conditional DDPM trained on digits,
class forgetting by every method of `workbench.unlearning.diffusion`, judged by integrity (how far
the unlearned model's samples move for the same class and noise), the forgotten class's accuracy
under a digits classifier, and Frechet distances of classifier features."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from workbench import train
from workbench.data import Dataset, load_digits
from workbench.models import MLP, functional
from workbench.unlearning import diffusion, integrity


class DiffusionSetup(NamedTuple):
    """Digits in [-1, 1], a trained denoiser, and a digits classifier for features and accuracy."""

    data: Dataset
    model: diffusion.Model
    params: Any
    losses: np.ndarray
    classifier: Callable  # images in [-1, 1] [n, 64] -> logits
    features: Callable  # images -> hidden features of the classifier
    seconds: float


_DIFFUSION: dict = {}


def diffusion_setup(hidden: int = 256, num_steps: int = 3000, batch_size: int = 128, learning_rate: float = 2e-3,
                    seed: int = 0) -> DiffusionSetup:
    """Train the class-conditional denoiser on all 1797 digits and a 64-64-10 classifier (cached).

    Args:
      hidden: width of the denoiser's hidden layers.
      num_steps: the denoiser's training steps.
      batch_size: examples per denoiser step.
      learning_rate: the denoiser's peak Adam step size.
      seed: the digits, the initialisations, the batches and the noise.

    Returns:
      `DiffusionSetup` with the data in [-1, 1], the trained denoiser, its losses, the classifier
      and its features, and the denoiser's training time (seconds, with compilation).
    """
    config = (hidden, num_steps, batch_size, learning_rate, seed)
    if config in _DIFFUSION:
        return _DIFFUSION[config]
    tr, te = load_digits(seed=seed)
    data = Dataset(jnp.concatenate([tr.x, te.x]) * 2 - 1, jnp.concatenate([tr.y, te.y]))
    key = jax.random.key(seed)
    k_model, k_train, k_cls = jax.random.split(key, 3)
    model = diffusion.denoiser(k_model, hidden=hidden)
    t0 = time.perf_counter()
    params, losses = diffusion.train_denoiser(model, data, k_train, learning_rate=learning_rate, num_steps=num_steps,
                                      batch_size=batch_size)
    secs = time.perf_counter() - t0
    f = functional(MLP(64, [64], 10, rngs=nnx.Rngs(seed)), l2=1e-4)
    cls = train.optimize(f.loss_fn, f.params, data, k_cls, optimizer=optax.adam(1e-2), num_steps=600,
                         batch_size=128)[0]
    w1, b1 = cls["layers"][0]["kernel"], cls["layers"][0]["bias"]
    features = jax.jit(lambda x: jnp.tanh(x @ w1 + b1))
    classifier = jax.jit(lambda x: f.predict_fn(cls, x))
    out = DiffusionSetup(data, model, params, losses, classifier, features, secs)
    _DIFFUSION[config] = out
    return out


class DiffusionRow(NamedTuple):
    """One forgetting method: forget-class accuracy of its samples (lower = forgotten), retain-class
    accuracy, Frechet distance to real retain digits (classifier features), integrity distances
    on retain classes (pixel RMSE, feature L2) and their noise floors, and its time."""

    method: str
    forget_accuracy: float
    retain_accuracy: float
    frechet: float
    integrity_pixel: float
    integrity_feature: float
    floor_pixel: float
    floor_feature: float
    seconds: float


class DiffusionComparison(NamedTuple):
    """The rows of `diffusion_methods` ("original" first) and each model's params by name."""

    rows: list[DiffusionRow]
    params: dict[str, Any]


def diffusion_methods(ds: DiffusionSetup, forget_class: int = 0, methods: Sequence[str] = diffusion.FORGETTING,
                      num_steps: int = 300, weight: float = 1.0, learning_rate: float = 1e-3,
                      samples_per_class: int = 50, sample_steps: int = 25, seed: int = 0,
                      target_class: int | None = None) -> DiffusionComparison:
    """Forget `forget_class` by each method and judge the samples.

    Args:
      ds: the trained setup (`diffusion_setup`).
      forget_class: the digit to forget.
      methods: kinds of `unlearning.diffusion.forget_class`, judged after the original model.
      num_steps: fine-tuning steps of each method.
      weight: the weight of each method's forget or remapping term.
      learning_rate: Adam's step size.
      samples_per_class: DDIM samples per class for the metrics.
      sample_steps: DDIM steps.
      seed: the forgetting runs' minibatches and the samples' noise (key `seed + 1`).
      target_class: the class drawn instead (remap kinds); None means the smallest retain class.

    Returns:
      `DiffusionComparison(rows, params)`.
    """
    key = jax.random.key(seed + 1)
    k_forget, k_int, k_fd = jax.random.split(key, 3)
    y = np.asarray(ds.data.y)
    forget = ds.data.take(np.flatnonzero(y == forget_class))
    retain = ds.data.take(np.flatnonzero(y != forget_class))
    retain_classes = [c for c in range(10) if c != forget_class]
    labels_r = jnp.asarray(np.repeat(retain_classes, samples_per_class))
    labels_f = jnp.full((samples_per_class,), forget_class)
    real_r = retain.x
    rows, all_params = [], {"original": ds.params}
    for name in ["original", *methods]:
        if name == "original":
            params, secs = ds.params, 0.0
        else:
            t0 = time.perf_counter()
            params = diffusion.forget_class(name, ds.model, ds.params, forget, retain, k_forget, num_steps=num_steps,
                                    weight=weight, learning_rate=learning_rate, target_class=target_class).params
            secs = time.perf_counter() - t0
            all_params[name] = params
        noise_f = jax.random.normal(k_fd, (labels_f.shape[0], 64))
        xf = diffusion.sample(ds.model, params, labels_f, noise_f, sample_steps)
        integ = integrity.integrity(ds.model, ds.params, params, labels_r, k_int, feature_fn=ds.features,
                            num_steps=sample_steps)
        xr = diffusion.sample(ds.model, params, labels_r, jax.random.normal(k_int, (labels_r.shape[0], 64)), sample_steps)
        acc_f = float(jnp.mean(jnp.argmax(ds.classifier(xf), -1) == forget_class))
        acc_r = float(jnp.mean(jnp.argmax(ds.classifier(xr), -1) == labels_r))
        fd = integrity.frechet_distance(np.asarray(ds.features(xr)), np.asarray(ds.features(real_r)))
        rows.append(DiffusionRow(name, acc_f, acc_r, fd, integ.pixel, integ.feature, integ.pixel_floor,
                                 integ.feature_floor, secs))
    return DiffusionComparison(rows, all_params)


class SampleGrid(NamedTuple):
    """Images [models, per_class * 10, 8, 8] in [0, 1] and the models' names (one row each)."""

    images: np.ndarray
    names: list[str]


def sample_grid(ds: DiffusionSetup, params_by_method: dict[str, Any], per_class: int = 2, seed: int = 0,
                sample_steps: int = 25) -> SampleGrid:
    """Samples of every model for every class, one shared noise per column (sorted by class).

    Args:
      ds: the trained setup (for the model's `apply_fn`).
      params_by_method: params by model name (e.g. `DiffusionComparison.params`).
      per_class: samples per class.
      seed: the shared noise (key `seed + 7`).
      sample_steps: DDIM steps.

    Returns:
      `SampleGrid(images, names)`.
    """
    labels = jnp.asarray(np.tile(np.arange(10), per_class))
    noise = jax.random.normal(jax.random.key(seed + 7), (labels.shape[0], 64))
    names = list(params_by_method)
    imgs = [np.asarray(diffusion.sample(ds.model, params_by_method[n], labels, noise, sample_steps)) for n in names]
    order = np.argsort(np.asarray(labels), kind="stable")
    return SampleGrid((np.stack(imgs)[:, order].reshape(len(names), -1, 8, 8) + 1) / 2, names)


class DiffusionHeadline(NamedTuple):
    """The diffusion paper's headline numbers (the claims' metrics): forget accuracy of remap and
    remap + distill, their retain accuracy gap, remap over remap + distill in Frechet distance and
    in integrity (feature and pixel), and remap + distill's feature integrity over its noise floor."""

    remap_forget_accuracy: float
    remap_distill_forget_accuracy: float
    remap_retain_accuracy_gap: float
    remap_frechet_ratio: float
    remap_integrity_ratio: float
    remap_integrity_pixel_ratio: float
    distill_integrity_over_floor: float


def diffusion_headline(rows: Sequence[DiffusionRow]) -> DiffusionHeadline:
    """The paper's headline numbers from the rows of `diffusion_methods`.

    Args:
      rows: rows including "remap" and "remap_distill".

    Returns:
      `DiffusionHeadline`.

    Raises:
      ValueError: when a row is missing.
    """
    by = {r.method: r for r in rows}
    if "remap" not in by or "remap_distill" not in by:
        raise ValueError(f"the headline compares remap with remap_distill; got rows {sorted(by)}")
    remap, distill = by["remap"], by["remap_distill"]
    return DiffusionHeadline(
        remap_forget_accuracy=remap.forget_accuracy,
        remap_distill_forget_accuracy=distill.forget_accuracy,
        remap_retain_accuracy_gap=abs(remap.retain_accuracy - distill.retain_accuracy),
        remap_frechet_ratio=remap.frechet / distill.frechet,
        remap_integrity_ratio=remap.integrity_feature / distill.integrity_feature,
        remap_integrity_pixel_ratio=remap.integrity_pixel / distill.integrity_pixel,
        distill_integrity_over_floor=distill.integrity_feature / distill.floor_feature,
    )


# ----------------------------------------------------------------------------- exploration (panels)


class ExploredDiffusion(NamedTuple):
    """One class-forgetting run: its table row and a sample grid (original vs unlearned)."""

    row: DiffusionRow
    images: np.ndarray
    names: list[str]


def explore_diffusion(ds: DiffusionSetup, method: str = "remap_distill", forget_class: int = 0,
                      weight: float = 1.0, num_steps: int = 200, seed: int = 0) -> ExploredDiffusion:
    """Forget one class by one method and judge it as `diffusion_methods` does (the panel's function).

    Args:
      ds: the trained setup (`diffusion_setup`).
      method: a kind of `unlearning.diffusion.forget_class`.
      forget_class: the digit to forget.
      weight: the strength of the forget (or remapping) term.
      num_steps: fine-tuning steps.
      seed: the run's minibatches and the samples' noise.

    Returns:
      `ExploredDiffusion(row, images, names)`: the method's row and a grid of the original's and
      the unlearned model's samples.
    """
    rows, params = diffusion_methods(ds, forget_class, methods=[method], num_steps=num_steps, weight=weight,
                                     samples_per_class=20, seed=seed)
    images, names = sample_grid(ds, params, per_class=1, seed=seed)
    return ExploredDiffusion(rows[-1], images, names)
