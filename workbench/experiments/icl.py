"""Recipes for in-context learning by linear self-attention: train an LSA on freshly sampled
regression tasks, compare it with GD / GD++ / Newton at every depth, and the one-layer study of
von Oswald et al. (trained weights against the construction)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workbench import icl
from workbench.core.numerics import check_positive_int
from workbench.icl.tasks import covariance_factor, sample_with_factor
from workbench.train import TrainResult, train


class TaskSetup(NamedTuple):
    """Where tasks come from: dimension, context length, inputs (uniform on [-1, 1] or Gaussian with
    a covariance of the given condition number), context noise."""

    dim: int = 10
    context_length: int = 10
    inputs: str = "uniform"
    condition_number: float = 1.0
    noise_std: float = 0.0

    def covariance(self) -> np.ndarray | None:
        """The input covariance (diagonal, eigenvalues 1 .. 1/condition_number) for Gaussian
        inputs; None for uniform inputs."""
        if self.inputs != "gaussian":
            return None
        return icl.conditioned_covariance(self.dim, self.condition_number)

    def sample(self, key, num_tasks: int, dtype=jnp.float32) -> icl.Tasks:
        """`num_tasks` tasks drawn from `key` (`icl.sample_tasks` with this setup)."""
        return icl.sample_tasks(key, num_tasks, dim=self.dim, context_length=self.context_length,
                                inputs=self.inputs, covariance=self.covariance(), noise_std=self.noise_std,
                                dtype=dtype)


class LSAFit(NamedTuple):
    """A trained LSA: its parameters, the `train` result, the task setup and its test loss."""

    params: dict
    result: TrainResult
    setup: TaskSetup
    test_loss: float


@functools.lru_cache(maxsize=32)
def _training_loss(inputs: str, dim: int, context_length: int, tasks_per_step: int, noise_std: float):
    """The training loss for one static configuration (cached so `train` compiles it once); each
    step's batch is one PRNG key (fresh tasks every step) and the covariance factor."""

    def loss_fn(params, batch):
        key = jax.random.wrap_key_data(batch["key"][0])
        factor = batch["factor"][0]
        tasks = sample_with_factor(key, factor, tasks_per_step, dim, context_length, inputs, 1.0, noise_std, factor.dtype)
        return icl.lsa_loss(params, tasks)

    return loss_fn


def evaluate_fit(fit: LSAFit, tasks: icl.Tasks) -> float:
    """The trained model's in-context loss on `tasks`, which must have the dimension and context
    length it was trained on.

    Args:
        fit: the trained `LSAFit`.
        tasks: the `Tasks` to evaluate on.

    Returns:
        The in-context loss, a Python float.

    Raises:
        ValueError: naming the dimension or context length that differs from training.
    """
    if tasks.dim != fit.setup.dim:
        raise ValueError(f"tasks have dim {tasks.dim} but the model was trained with dim={fit.setup.dim}")
    if tasks.context_length != fit.setup.context_length:
        raise ValueError(f"tasks have context_length {tasks.context_length} but the model was trained with "
                         f"context_length={fit.setup.context_length}")
    return float(icl.lsa_loss(fit.params, tasks))


def fit_lsa(setup: TaskSetup, num_layers: int = 1, *, mlp: bool = False, num_steps: int = 3000,
            tasks_per_step: int = 1024, learning_rate: float = 1e-3, init_scale: float = 0.002,
            num_test_tasks: int = 4096, seed: int = 0, progress: bool = True) -> LSAFit:
    """Train a `num_layers` LSA (with ReLU MLPs if `mlp`) with Adam on fresh tasks every step;
    the learning rate decays by cosine to 1% of `learning_rate`.

    Args:
        setup: the `TaskSetup` tasks are drawn from (fresh tasks every step).
        num_layers: the number of LSA layers.
        mlp: whether each layer ends with a residual ReLU MLP.
        num_steps: Adam steps, an int >= 1.
        tasks_per_step: tasks per training step.
        learning_rate: Adam's peak step size, positive.
        init_scale: the standard deviation of the initial weights.
        num_test_tasks: held-out tasks for the test loss.
        seed: the initialisation, training tasks and test tasks (`jax.random.key(seed)`, split).
        progress: whether to show a progress bar.

    Returns:
        The `LSAFit` (parameters, training result, setup, test loss).

    Raises:
        ValueError: if an argument is out of range.
        FloatingPointError: if training diverges.
    """
    check_positive_int("num_steps", num_steps)
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive and finite, got {learning_rate!r}")
    _, k_train, k_order, k_test = jax.random.split(jax.random.key(seed), 4)
    params = _initial_params(setup, num_layers, mlp, init_scale, seed)
    cov = setup.covariance()
    factor = jnp.eye(setup.dim, dtype=jnp.float32) if cov is None else covariance_factor(cov, setup.dim).astype(jnp.float32)
    data = {"key": jax.random.key_data(jax.random.split(k_train, num_steps)),
            "factor": jnp.broadcast_to(factor, (num_steps, setup.dim, setup.dim))}
    loss_fn = _training_loss(setup.inputs, setup.dim, setup.context_length, tasks_per_step, float(setup.noise_std))
    optimizer = _optimizer(learning_rate, num_steps)
    try:
        result = train(loss_fn, params, data, k_order, optimizer=optimizer, num_steps=num_steps, batch_size=1,
                       progress=progress, steps_per_chunk=_steps_per_chunk(num_steps))
    except FloatingPointError as err:
        raise FloatingPointError(f"training the {num_layers}-layer LSA diverged: {err}") from err
    test = setup.sample(k_test, num_test_tasks)
    test_loss = float(icl.lsa_loss(result.params, test))
    if not math.isfinite(test_loss):
        raise FloatingPointError(f"the trained {num_layers}-layer LSA gives a non-finite test loss ({test_loss}); "
                                 "training diverged: lower learning_rate")
    return LSAFit(result.params, result, setup, test_loss)


def _initial_params(setup: TaskSetup, num_layers: int, mlp: bool, init_scale: float, seed: int) -> dict:
    """The weights `fit_lsa` starts from (the first of the four keys split from `seed`)."""
    k_init = jax.random.split(jax.random.key(seed), 4)[0]
    return icl.init_params(k_init, setup.dim, num_layers=num_layers, mlp=mlp, init_scale=init_scale)


def _steps_per_chunk(num_steps: int, cap: int = 500) -> int:
    """Equal chunks of at most `cap` steps covering `num_steps`: a chunk always runs its full
    length (steps past the end are computed and discarded), so 600 steps in chunks of 500 would
    compute 1000; two chunks of 300 compute 600, with one compiled program."""
    chunks = -(-num_steps // cap)
    return -(-num_steps // chunks)


@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate: float, num_steps: int):
    schedule = optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.01)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


class DepthComparison(NamedTuple):
    """Test losses per depth K: the trained K-layer LSA, K GD steps with the line-searched eta*_K,
    fitted K-layer GD++, K Newton iterations; plus least squares (Newton's limit)."""

    setup: TaskSetup
    depths: np.ndarray
    trained: np.ndarray
    gd: np.ndarray
    gdpp: np.ndarray
    newton: np.ndarray
    least_squares: float
    gd_etas: np.ndarray
    fits: tuple  # the LSAFit of each depth
    gdpp_fits: tuple

    def deepest_over_gd(self) -> float:
        """The deepest trained model's test loss over that of as many GD steps (below 1: the
        model does better than GD)."""
        return float(self.trained[-1] / self.gd[-1])

    def trained_over_gd(self) -> np.ndarray:
        """Each depth's trained test loss over that of as many GD steps with eta*_K, [depths]."""
        return self.trained / self.gd

    def record(self) -> dict:
        """The losses per depth as plain lists, for `workbench.record`."""
        return {"depths": self.depths.tolist(), "trained": self.trained.tolist(), "gd": self.gd.tolist(),
                "gdpp": self.gdpp.tolist(), "newton": self.newton.tolist(), "least_squares": self.least_squares}

    def table(self) -> str:
        """The losses as a fixed-width text table, one row per depth."""
        lines = ["  K   trained      GD(eta*)     GD++         Newton", ]
        for i, k in enumerate(self.depths):
            lines.append(f"  {k}   {self.trained[i]:.4e}   {self.gd[i]:.4e}   {self.gdpp[i]:.4e}   {self.newton[i]:.4e}")
        lines.append(f"  least squares (Newton's limit): {self.least_squares:.3e}")
        return "\n".join(lines)


def compare_depths(setup: TaskSetup, depths=(1, 2, 3), *, mlp: bool = False, num_steps: int = 600,
                   tasks_per_step: int = 256, learning_rate: float = 5e-3, init_scale: float = 0.05,
                   num_test_tasks: int = 2048, num_fit_tasks: int = 1024, gdpp_steps: int = 200, seed: int = 0,
                   progress: bool = True) -> DepthComparison:
    """Train one LSA per depth and evaluate it with every baseline on the same held-out tasks.
    Baselines are tuned (eta*, GD++ scalars) on separate tasks, never on the test tasks.

    The default init_scale (0.05, larger than the one-layer study's 0.002) lets deeper models leave
    the small-weight plateau within a few hundred steps.

    Args:
        setup: the `TaskSetup`.
        depths: the depths K to train and compare, ints >= 1.
        mlp: whether the models have MLPs.
        num_steps: Adam steps per model.
        tasks_per_step: tasks per training step.
        learning_rate: Adam's peak step size.
        init_scale: the standard deviation of the initial weights.
        num_test_tasks: the held-out tasks every method is scored on.
        num_fit_tasks: the tasks eta* and the GD++ scalars are tuned on.
        gdpp_steps: Adam steps of the GD++ fit.
        seed: the seed of training (`fit_lsa`) and, offset by 1000, of the test and tuning tasks.
        progress: whether to show progress bars.

    Returns:
        The `DepthComparison`.

    Raises:
        ValueError: if `depths` is empty or not positive.
    """
    depths = [int(k) for k in depths]
    if not depths or min(depths) < 1:
        raise ValueError(f"depths must be positive ints, got {depths!r}")
    key = jax.random.key(seed + 1000)
    k_test, k_fit, k_gdpp = jax.random.split(key, 3)
    test, fit_tasks = setup.sample(k_test, num_test_tasks), setup.sample(k_fit, num_fit_tasks)
    newton = np.asarray(icl.icl_losses(icl.newton_predictions(test, max(depths)), test))
    rows = {"trained": [], "gd": [], "gdpp": [], "newton": [], "eta": []}
    fits, gdpp_fits = [], []
    for k in depths:
        fit = fit_lsa(setup, k, mlp=mlp, num_steps=num_steps, tasks_per_step=tasks_per_step,
                      learning_rate=learning_rate, init_scale=init_scale, num_test_tasks=num_test_tasks,
                      seed=seed, progress=progress)
        ls = icl.line_search_eta(fit_tasks, k)
        gdpp = icl.fit_gdpp(fit_tasks, k_gdpp, k, num_steps=gdpp_steps)
        fits.append(fit)
        gdpp_fits.append(gdpp)
        rows["trained"].append(float(icl.lsa_loss(fit.params, test)))
        rows["gd"].append(float(icl.icl_loss(icl.gd_predictions(test, ls.eta, k)[-1], test)))
        rows["gdpp"].append(float(icl.icl_loss(icl.gdpp_predictions(test, gdpp.etas, gdpp.gammas)[-1], test)))
        rows["newton"].append(float(newton[k]))
        rows["eta"].append(ls.eta)
    ls_loss = float(icl.icl_loss(icl.least_squares_predictions(test), test))
    return DepthComparison(setup, np.asarray(depths), *(np.asarray(rows[n]) for n in ("trained", "gd", "gdpp", "newton")),
                           ls_loss, np.asarray(rows["eta"]), tuple(fits), tuple(gdpp_fits))


class LayerTracking(NamedTuple):
    """For the deepest trained model: which GD step / Newton iteration / GD++ layer each layer's
    read-out matches (see `icl.match_steps`)."""

    gd: icl.StepMatch
    newton: icl.StepMatch
    gdpp: icl.StepMatch
    gd_eta: float


def track_layers(fit: LSAFit, gdpp: icl.GDPlusPlus, *, max_gd_steps: int = 32, max_newton_iters: int = 12,
                 num_tasks: int = 1024, seed: int = 0) -> LayerTracking:
    """Compare each layer's read-out with GD steps 1..max_gd_steps (at the eta* line-searched for
    max_gd_steps steps, so long runs stay stable), Newton iterations 0..max_newton_iters-1 and the
    fitted GD++ layers, on fresh tasks.

    Args:
        fit: the trained `LSAFit` (usually the deepest).
        gdpp: the fitted `icl.GDPlusPlus` of the same depth.
        max_gd_steps: GD steps compared.
        max_newton_iters: Newton iterations compared (k = 0 .. max_newton_iters - 1).
        num_tasks: fresh test tasks (and as many for the line search).
        seed: the tasks' seed, offset by 2000.

    Returns:
        `LayerTracking(gd, newton, gdpp, gd_eta)`: an `icl.StepMatch` per algorithm and the GD step.
    """
    k_test, k_fit = jax.random.split(jax.random.key(seed + 2000))
    test = fit.setup.sample(k_test, num_tasks)
    layers = icl.layer_predictions(fit.params, icl.tokens(test))
    eta = icl.line_search_eta(fit.setup.sample(k_fit, num_tasks), max_gd_steps, num_grid=32, num_iters=25).eta
    gd = icl.match_steps(layers, icl.gd_predictions(test, eta, max_gd_steps))
    newton = icl.match_steps(layers, icl.newton_predictions(test, max_newton_iters - 1))
    gdpp_m = icl.match_steps(layers, icl.gdpp_predictions(test, gdpp.etas, gdpp.gammas))
    return LayerTracking(gd, newton, gdpp_m, eta)


def construction_error(setup: TaskSetup, key: jax.Array, *, num_tasks: int = 1024, num_layers: int = 1,
                       normalization: int | None = None, dtype=jnp.float32) -> float:
    """Max over random tasks (and a random start w0 and step eta from `key`) of
    |LSA(gd_weights) prediction - GD prediction| / max(1, |GD prediction|), per layer/step, with
    GD computed in float64 NumPy straight from the tokens (`icl.gd_reference_predictions`).

    Args:
        setup: the `TaskSetup` of the tasks.
        key: the PRNG key of the tasks, the start w0 and the step eta.
        num_tasks: the number of random tasks.
        num_layers: layers of the construction (= GD steps compared).
        normalization: the count the construction divides eta by, P = eta / normalization I
            (default None: the context length N, the construction; the negative control passes
            N + 1, the query token counted as context).
        dtype: the dtype of tasks and weights (default float32).

    Returns:
        The worst relative error, a Python float (float32 rounding: ~1e-7 .. 1e-6).

    Raises:
        ValueError: if `normalization` is not a positive int.
    """
    count = setup.context_length if normalization is None else check_positive_int("normalization", normalization)
    k_tasks, k_w0, k_eta = jax.random.split(key, 3)
    tasks = setup.sample(k_tasks, num_tasks, dtype=dtype)
    w0 = jax.random.normal(k_w0, (setup.dim,), dtype)
    eta = float(jax.random.uniform(k_eta, (), minval=0.1, maxval=1.0))
    params = icl.gd_weights(setup.dim, count, eta, num_layers=num_layers, w0=w0, dtype=dtype)
    toks = icl.tokens(tasks, w0)
    lsa = np.asarray(icl.layer_predictions(params, toks), np.float64)
    gd = icl.gd_reference_predictions(toks, eta, num_layers, w0=np.asarray(w0))
    return float(np.max(np.abs(lsa - gd) / np.maximum(1.0, np.abs(gd))))


class OneLayerControls(NamedTuple):
    """Broken variants of the one-layer study, each scored like the trained model: the untrained
    model (its initial weights) against the construction, and the construction with half the
    line-searched step against one GD step with eta*."""

    untrained_sensitivity_cosine: float  # sensitivity cosine of the initial weights vs the construction
    half_eta_relative_gap: float  # |L(construction, eta*/2) - L_GD| / L_GD on the test tasks


class OneLayerStudy(NamedTuple):
    """von Oswald et al.'s first experiment: one trained LSA layer against one GD step with eta*."""

    fit: LSAFit
    eta: float  # line-searched step of one GD step
    trained_loss: float
    gd_loss: float
    relative_gap: float  # |L_trained - L_GD| / L_GD on the test tasks
    alignment: icl.Alignment
    constructed: dict  # the GD construction with eta*
    interpolation: icl.Interpolation
    controls: OneLayerControls


def one_layer_study(setup: TaskSetup | None = None, *, num_steps: int = 1000, tasks_per_step: int = 256,
                    learning_rate: float = 2e-3, init_scale: float = 0.002, num_test_tasks: int = 4096,
                    seed: int = 0, progress: bool = True) -> OneLayerStudy:
    """Train one LSA layer, line-search eta* on separate tasks, and compare both on test tasks
    (`setup` defaults to the paper's d = 10, N = 10, x ~ U(-1, 1)).

    Args:
        setup: the `TaskSetup` (default None: `TaskSetup()`).
        num_steps: Adam steps of the one-layer model.
        tasks_per_step: tasks per training step.
        learning_rate: Adam's peak step size.
        init_scale: the standard deviation of the initial weights.
        num_test_tasks: held-out tasks (and as many for the line search).
        seed: the training seed (`fit_lsa`) and, offset by 3000, of the test and tuning tasks.
        progress: whether to show a progress bar.

    Returns:
        The `OneLayerStudy`.
    """
    setup = TaskSetup() if setup is None else setup
    fit = fit_lsa(setup, 1, num_steps=num_steps, tasks_per_step=tasks_per_step, learning_rate=learning_rate,
                  init_scale=init_scale, num_test_tasks=num_test_tasks, seed=seed, progress=progress)
    k_test, k_fit = jax.random.split(jax.random.key(seed + 3000))
    test = setup.sample(k_test, num_test_tasks)
    eta = icl.line_search_eta(setup.sample(k_fit, num_test_tasks), 1).eta
    trained = float(icl.lsa_loss(fit.params, test))
    gd = float(icl.icl_loss(icl.gd_predictions(test, eta, 1)[-1], test))
    constructed = icl.gd_weights(setup.dim, setup.context_length, eta)
    align = icl.alignment(icl.lsa_predictor(fit.params), icl.lsa_predictor(constructed), test)
    interp = icl.interpolation_losses(fit.params, constructed, test)
    untrained = _initial_params(setup, 1, False, init_scale, seed)
    half = float(icl.lsa_loss(icl.gd_weights(setup.dim, setup.context_length, eta / 2), test))
    controls = OneLayerControls(
        icl.alignment(icl.lsa_predictor(untrained), icl.lsa_predictor(constructed), test).sensitivity_cosine,
        abs(half - gd) / gd)
    return OneLayerStudy(fit, eta, trained, gd, abs(trained - gd) / gd, align, constructed, interp, controls)


class Exploration(NamedTuple):
    """One trained K-layer model and each algorithm's test loss after 1..K steps (Newton: k = 0..K)."""

    fit: LSAFit
    trained_layers: np.ndarray  # [K] loss of each layer's read-out
    gd: np.ndarray  # [K] at eta* line-searched for K steps
    gdpp: np.ndarray  # [K] fitted K-layer GD++ after each layer
    newton: np.ndarray  # [K + 1]
    least_squares: float


def explore(dim: int = 5, context_length: int = 10, condition_number: float = 1.0, num_layers: int = 2,
            num_steps: int = 500, *, tasks_per_step: int = 256, learning_rate: float = 5e-3, init_scale: float = 0.05,
            seed: int = 0) -> Exploration:
    """The panel's computation: train a `num_layers` LSA on Gaussian tasks of the given shape and
    conditioning, and evaluate it and every algorithm, layer by layer, on the same test tasks.

    Args:
        dim: the input dimension d.
        context_length: context pairs N per task.
        condition_number: the condition number of the Gaussian input covariance.
        num_layers: the model depth K.
        num_steps: Adam steps.
        tasks_per_step: tasks per training step.
        learning_rate: Adam's peak step size.
        init_scale: the standard deviation of the initial weights.
        seed: the training seed and, offset by 4000, of the test and tuning tasks.

    Returns:
        The `Exploration`.
    """
    setup = TaskSetup(dim=dim, context_length=context_length, inputs="gaussian", condition_number=condition_number)
    fit = fit_lsa(setup, num_layers, num_steps=num_steps, tasks_per_step=tasks_per_step,
                  learning_rate=learning_rate, init_scale=init_scale, seed=seed)
    k_test, k_fit, k_gdpp = jax.random.split(jax.random.key(seed + 4000), 3)
    test, fit_tasks = setup.sample(k_test, 2048), setup.sample(k_fit, 1024)
    eta = icl.line_search_eta(fit_tasks, num_layers).eta
    gdpp = icl.fit_gdpp(fit_tasks, k_gdpp, num_layers, num_steps=200)
    return Exploration(
        fit, np.asarray(icl.icl_losses(icl.layer_predictions(fit.params, icl.tokens(test)), test)),
        np.asarray(icl.icl_losses(icl.gd_predictions(test, eta, num_layers), test)),
        np.asarray(icl.icl_losses(icl.gdpp_predictions(test, gdpp.etas, gdpp.gammas), test)),
        np.asarray(icl.icl_losses(icl.newton_predictions(test, num_layers), test)),
        float(icl.icl_loss(icl.least_squares_predictions(test), test)))
