"""Influence-function figures: predicted against retrained effects, proponents and opponents,
the LDS / mislabel-AUC comparison, fading over training, and correcting mispredictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from workbench.influence import CURVATURE_ESTIMATORS


def predicted_vs_actual(predicted: Mapping[str, np.ndarray], actual: np.ndarray,
                        diagonal: Sequence[str] = CURVATURE_ESTIMATORS):
    """One scatter panel per estimator: its predicted change of each test loss
    (`predicted[name]`, [n_test, n_removed]) against the `actual` change after leave-one-out
    retraining (same shape), on two rows; the estimators in `diagonal` get the line y = x.

    Args:
        predicted: dict estimator name -> predicted effects [n_test, n_removed] (e.g.
            `validation.predicted_loo_effects(scores, removed)`).
        actual: actual effects [n_test, n_removed] (`LOOResult.actual`).
        diagonal: the estimators that should sit on y = x (the inverse-curvature ones; the
            others' scale is arbitrary).

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    actual = np.asarray(actual)
    cols = (len(predicted) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(3.6 * cols, 7), squeeze=False)
    lim = np.abs(actual).max()
    for ax, (name, pred) in zip(np.ravel(axes), predicted.items()):
        ax.scatter(np.asarray(pred).ravel(), actual.ravel(), s=3, alpha=0.4)
        if name in diagonal:
            ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
        ax.set(title=name, xlabel="predicted change of test loss", ylabel="actual (LOO retraining)")
    for ax in np.ravel(axes)[len(predicted):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def predicted_vs_actual_hover(predicted: np.ndarray, actual: np.ndarray, removed: Sequence[int],
                              train_labels: np.ndarray, test_labels: np.ndarray, name: str = "exact"):
    """Plotly version of one `predicted_vs_actual` panel, for hovering: each point names its
    removed training example (index and label) and its test point, so an outlier can be looked up.
    `predicted` and `actual` are [n_test, n_removed].

    Args:
        predicted: predicted effects [n_test, n_removed].
        actual: actual effects [n_test, n_removed].
        removed: the training indices removed [n_removed].
        train_labels: labels of the training set [n_train].
        test_labels: labels of the test points [n_test].
        name: the estimator, for the title and legend.

    Returns:
        The plotly `Figure`.
    """
    import plotly.graph_objects as go

    predicted, actual = np.asarray(predicted), np.asarray(actual)
    n_test, n_removed = actual.shape
    test_idx, removed_idx = np.meshgrid(np.arange(n_test), np.asarray(removed), indexing="ij")
    text = [f"removed training example #{r} (label {int(train_labels[r])})<br>test point #{t} (label {int(test_labels[t])})"
            for t, r in zip(test_idx.ravel(), removed_idx.ravel())]
    lim = float(np.abs(actual).max())
    fig = go.Figure([
        go.Scattergl(x=predicted.ravel(), y=actual.ravel(), mode="markers", text=text, name=name,
                     hovertemplate="%{text}<br>predicted %{x:.3g}, actual %{y:.3g}<extra></extra>",
                     marker={"size": 4, "opacity": 0.5}),
        go.Scatter(x=[-lim, lim], y=[-lim, lim], mode="lines", name="y = x", line={"dash": "dash", "color": "black"}),
    ])
    fig.update_layout(title=f"{name}: predicted against actual change of test loss (hover a point)",
                      xaxis_title="predicted change of test loss", yaxis_title="actual (LOO retraining)",
                      width=640, height=480)
    return fig


def proponents_opponents(test_image: np.ndarray, test_label: int, train_images: np.ndarray,
                         train_labels: np.ndarray, proponents, opponents, image_shape=(8, 8)):
    """The test image, and on two rows its proponents and opponents (`influence.Ranked` for one
    test point: `.indices[0]`, `.scores[0]`) as training images with label and score.

    Args:
        test_image: the test point's image, any shape of `image_shape`'s size.
        test_label: its label.
        train_images: training images [n_train, ...].
        train_labels: training labels [n_train].
        proponents: `influence.Ranked` of `Estimator.proponents` for this one test point.
        opponents: `influence.Ranked` of `Estimator.opponents` for this one test point.
        image_shape: the shape each image is drawn in (8 x 8 for digits).

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    top_k = len(np.asarray(proponents.indices[0]))
    fig, axes = plt.subplots(2, top_k + 1, figsize=(1.6 * (top_k + 1), 3.6))
    _image_rows(axes, test_image, test_label, train_images, train_labels, proponents, opponents, image_shape,
                names=("proponent", "opponent"), title="{label}\ny={y} s={score:.2g}", test_fontsize=None)
    fig.tight_layout()
    return fig


def _image_rows(axes, test_image, test_label, train_images, train_labels, proponents, opponents, image_shape,
                names, title, test_fontsize):
    """The test image at axes[0, 0], then proponents (row 0) and opponents (row 1) with titles."""
    axes[0, 0].imshow(np.asarray(test_image).reshape(image_shape), cmap="gray_r")
    axes[0, 0].set_title(f"test: {int(test_label)}", fontsize=test_fontsize)
    axes[1, 0].axis("off")
    for row, (label, ranked) in enumerate(zip(names, (proponents, opponents))):
        for j, (i, score) in enumerate(zip(np.asarray(ranked.indices[0]), np.asarray(ranked.scores[0]))):
            ax = axes[row, j + 1]
            ax.imshow(np.asarray(train_images[i]).reshape(image_shape), cmap="gray_r")
            ax.set_title(title.format(label=label, y=int(train_labels[i]), score=score), fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])


def _value(v) -> float:
    return float("nan") if v is None else float(v)


def lds_and_auc(table: Sequence[object]):
    """Bars per estimator and model: LDS on the left, mislabel AUC on the right (chance dashed).

    Args:
        table: `validation.evaluation_table` rows (`.model`, `.estimator`, `.lds`,
            `.mislabel_auc`; None drawn as no bar).

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    model_names = list(dict.fromkeys(t.model for t in table))
    names = list(dict.fromkeys(t.estimator for t in table))
    x = np.arange(len(names))
    width = 0.8 / len(model_names)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for m, model_name in enumerate(model_names):
        offset = (m - (len(model_names) - 1) / 2) * width
        row = {t.estimator: t for t in table if t.model == model_name}
        ax1.bar(x + offset, [_value(row[n].lds) if n in row else np.nan for n in names], width=width, label=model_name)
        ax2.bar(x + offset, [_value(row[n].mislabel_auc) if n in row else np.nan for n in names], width=width,
                label=model_name)
    ax1.set(xticks=x, ylabel="LDS (Spearman)", title="linear datamodeling score")
    ax2.set(xticks=x, ylabel="ROC AUC", title="finding flipped labels by self-influence", ylim=(0.4, 1.0))
    for ax in (ax1, ax2):
        ax.set_xticklabels(names, rotation=40, ha="right")
    ax2.axhline(0.5, color="k", lw=0.6, ls="--")
    ax1.legend()
    fig.tight_layout()
    return fig


def lds_per_test(per_test: np.ndarray, title: str, bins: int = 20):
    """Histogram of the LDS per test point (Spearman of each test point's ranking).

    Args:
        per_test: `LDSResult.per_test`, [n_test].
        title: the axes title.
        bins: histogram bins.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(np.asarray(per_test), bins=bins)
    ax.set(xlabel="Spearman per test point", ylabel="test points", title=title)
    fig.tight_layout()
    return fig


def fading(steps: np.ndarray, pearson: np.ndarray, spearman: np.ndarray, pearson_dot: np.ndarray,
           divergence: np.ndarray):
    """Correlation of the influence function (Pearson, Spearman) and of the gradient dot product
    (Pearson) with the actual effect of each removal against the steps trained after it; the
    parameter divergence of the two runs on a right axis.

    Args:
        steps: training steps after the removal [T] (`FadingResult.steps`).
        pearson: the influence function's Pearson correlation [T].
        spearman: its Spearman correlation [T].
        pearson_dot: the gradient dot product's Pearson correlation [T]
            (`validation.fading_correlations(...).pearson`).
        divergence: mean parameter distance of the runs with and without each example [T].

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, pearson, "o-", label="influence function (Pearson)")
    ax.plot(steps, spearman, "s--", label="influence function (Spearman)")
    ax.plot(steps, pearson_dot, "^:", label="gradient dot product (Pearson)")
    ax.set(xlabel="training steps after the removal", ylabel="correlation with the actual effect")
    ax.legend(loc="lower left")
    ax2 = ax.twinx()
    ax2.plot(steps, divergence, color="gray", lw=2, alpha=0.6)
    ax2.set_ylabel("parameter divergence ||theta_-i - theta||", color="gray")
    fig.tight_layout()
    return fig


def removal_effect(steps: np.ndarray, actual: np.ndarray, predicted: float):
    """The actual effect of one removal on one test loss over training, against the influence
    function's (constant) prediction.

    Args:
        steps: training steps after the removal [T].
        actual: the actual change of the test loss at each step [T].
        predicted: the influence function's predicted change.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, actual, "o-", label="actual")
    ax.axhline(predicted, color="k", ls="--", label="influence function")
    ax.set(xlabel="training steps after the removal", ylabel="change of the test loss")
    ax.legend()
    fig.tight_layout()
    return fig


def fix_rate(k_values: Sequence[int], results: Sequence[object]):
    """Left: fraction of mispredictions fixed against k for the influential opponents and for
    random examples; right: the accuracy lost on the other test points. `results` are
    `validation.correct_mispredictions` results, one per k.

    Args:
        k_values: the numbers of training examples re-weighted.
        results: one `CorrectionResult` per k (`.fix_rate`, `.fix_rate_random`, `.damage`,
            `.damage_random`).

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    results = list(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(k_values, [r.fix_rate for r in results], "o-", label="most harmful (influence)")
    ax1.plot(k_values, [r.fix_rate_random for r in results], "s--", label="random")
    ax1.set(xlabel="training examples re-weighted (k)", ylabel="fraction of mispredictions fixed", xscale="log")
    ax1.legend()
    ax2.plot(k_values, [r.damage for r in results], "o-", label="most harmful (influence)")
    ax2.plot(k_values, [r.damage_random for r in results], "s--", label="random")
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set(xlabel="training examples re-weighted (k)", ylabel="accuracy lost on other test points", xscale="log")
    ax2.legend()
    fig.tight_layout()
    return fig


def estimator_view(name: str, scores: np.ndarray, reference: np.ndarray, test_image: np.ndarray, test_label: int,
                   train_images: np.ndarray, train_labels: np.ndarray, proponents, opponents, image_shape=(8, 8)):
    """One estimator at a glance: left, its scores of every (test, training) pair against the
    reference estimator's; right, the test image and its top proponents / opponents (training
    images with label and score), as in `proponents_opponents`.

    Args:
        name: the estimator.
        scores: its scores [n_test, n_train].
        reference: the reference (exact) scores, same shape.
        test_image: the test point's image.
        test_label: its label.
        train_images: training images [n_train, ...].
        train_labels: training labels [n_train].
        proponents: `influence.Ranked` of the test point's proponents.
        opponents: `influence.Ranked` of its opponents.
        image_shape: the shape each image is drawn in.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    top_k = len(np.asarray(proponents.indices[0]))
    fig = plt.figure(figsize=(4 + 1.3 * (top_k + 1), 3.6))
    left, right = fig.subfigures(1, 2, width_ratios=[4, 1.3 * (top_k + 1)])
    ax = left.subplots()
    left.subplots_adjust(left=0.2, bottom=0.17, right=0.95)
    s, r = np.asarray(scores).ravel(), np.asarray(reference).ravel()
    ax.scatter(r, s, s=2, alpha=0.3)
    corr = float(np.corrcoef(r, s)[0, 1])
    ax.set(xlabel="reference (exact) score", ylabel=f"{name} score", title=f"{name}: r = {corr:.3f}")
    axes = right.subplots(2, top_k + 1)
    _image_rows(axes, test_image, test_label, train_images, train_labels, proponents, opponents, image_shape,
                names=("pro", "opp"), title="{label} y={y}\n{score:.2g}", test_fontsize=8)
    return fig


def correction(result, k: int):
    """One `validation.correct_mispredictions` result: fraction of mispredictions fixed and accuracy
    lost on the other test points, for the k most harmful examples against k random ones.

    Args:
        result: the `CorrectionResult`.
        k: the number of examples re-weighted (for the title).

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 3))
    labels = ["most harmful", "random"]
    ax1.bar(labels, [result.fix_rate, result.fix_rate_random], color=["C0", "C7"])
    ax1.set(ylabel="fraction of mispredictions fixed", ylim=(0, 1), title=f"k = {k}")
    ax2.bar(labels, [result.damage, result.damage_random], color=["C0", "C7"])
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set(ylabel="accuracy lost on other test points")
    fig.tight_layout()
    return fig


def influence_concentration(scores: Mapping[str, np.ndarray]):
    """How much of the total absolute influence the top sequences carry, per estimator.

    For each estimator, the training sequences are sorted by |score| per test point and the
    cumulative share of the total is averaged over test points; an even spread is the diagonal
    (random scores lie just above it), a heavy tail bends sharply up on the left.

    Args:
        scores: estimator name -> [n_test, n_train] scores.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in scores.items():
        magnitude = -np.sort(-np.abs(np.asarray(s, dtype=np.float64)), axis=1)
        share = (np.cumsum(magnitude, axis=1) / magnitude.sum(axis=1, keepdims=True)).mean(axis=0)
        fraction = np.arange(1, share.size + 1) / share.size
        ax.plot(fraction, share, label=name, ls="--" if name == "random" else "-")
    ax.plot(fraction, fraction, color="k", lw=0.6, ls=":", label="even spread")
    ax.set(xscale="log", xlabel="fraction of training sequences (largest |influence| first)",
           ylabel="share of total |influence|", title="how concentrated influence is")
    ax.legend()
    fig.tight_layout()
    return fig


def lds_bars(lds: Mapping[str, float], title: str = "linear datamodeling score"):
    """One bar per estimator: its LDS against retraining (random scores' as the dashed line when given).

    Args:
        lds: estimator name -> LDS; a "random" entry is drawn as a dashed line, not a bar.
        title: the axes title.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib.pyplot as plt

    names = [n for n in lds if n != "random"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(np.arange(len(names)), [lds[n] for n in names])
    if "random" in lds:
        ax.axhline(lds["random"], color="k", lw=0.8, ls="--", label="random scores")
        ax.legend()
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xticks=np.arange(len(names)), ylabel="LDS (Spearman)", title=title)
    ax.set_xticklabels(names, rotation=30, ha="right")
    fig.tight_layout()
    return fig
