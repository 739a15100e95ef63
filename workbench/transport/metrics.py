"""How good a map is, against the answer where it is known and against samples where it is not.

- `l2_uvp`: the L2 unexplained variance percentage (Korotin et al. 2021),
  100 * E|T(x) - T*(x)|^2 / Var(nu), with Var(nu) = E|y - E y|^2: 0 for the optimal map, 100
  for the constant map at nu's mean.
- `cost_ratio`: E|x - T(x)|^2 / W2^2(mu, nu), the map's transport cost against the optimal one
  (1 for the optimal map; below 1 means T does not reach nu, above 1 that it moves mass further
  than needed).
- `assignment_w2`: W2 between two equal-size samples by an exact assignment; `w2_against_floor`
  puts W2(T(x), y) next to the floor W2(y, y') between two independent target samples of the
  same size (what a perfect map scores on finite samples).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from workbench.transport.plans import assignment


def _points(name, a):
    a = np.asarray(a, np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be points [n, dim], got shape {a.shape}")
    return a


def l2_uvp(mapped, true_mapped, target_variance: float) -> float:
    """100 * mean_i |T(x_i) - T*(x_i)|^2 / Var(nu).

    Args:
        mapped: [n, dim] T(x_i).
        true_mapped: [n, dim] T*(x_i), the optimal map at the same points.
        target_variance: Var(nu) = E|y - E y|^2 (> 0).

    Returns:
        The L2-UVP in percent (float).

    Raises:
        ValueError: shapes that differ, or a non-positive variance.
    """
    mapped, true_mapped = _points("mapped", mapped), _points("true_mapped", true_mapped)
    if mapped.shape != true_mapped.shape:
        raise ValueError(f"mapped and true_mapped must have the same shape, got {mapped.shape} and {true_mapped.shape}")
    if not target_variance > 0:
        raise ValueError(f"target_variance must be > 0, got {target_variance!r}")
    return float(100.0 * np.mean(np.sum((mapped - true_mapped) ** 2, axis=1)) / target_variance)


def transport_cost(x, mapped) -> float:
    """mean_i |x_i - T(x_i)|^2, the map's transport cost on a sample.

    Args:
        x: [n, dim] source points.
        mapped: [n, dim] their images.

    Returns:
        The mean squared displacement (float).
    """
    x, mapped = _points("x", x), _points("mapped", mapped)
    if x.shape != mapped.shape:
        raise ValueError(f"x and mapped must have the same shape, got {x.shape} and {mapped.shape}")
    return float(np.mean(np.sum((x - mapped) ** 2, axis=1)))


def cost_ratio(x, mapped, w2_squared: float) -> float:
    """The map's transport cost over the optimal one: mean_i |x_i - T(x_i)|^2 / W2^2.

    Args:
        x: [n, dim] source points.
        mapped: [n, dim] their images T(x_i).
        w2_squared: W2^2(mu, nu) (> 0), closed form or E|x - T*(x)|^2.

    Returns:
        The ratio (1 for the optimal map).

    Raises:
        ValueError: shapes that differ, or a non-positive `w2_squared`.
    """
    if not w2_squared > 0:
        raise ValueError(f"w2_squared must be > 0, got {w2_squared!r}")
    return transport_cost(x, mapped) / w2_squared


def assignment_w2(a, b) -> float:
    """W2 between the empirical measures of two equal-size samples, by exact assignment.

    Args:
        a: [n, dim] the first sample.
        b: [n, dim] the second sample.

    Returns:
        sqrt(min over permutations of mean_i |a_i - b_perm(i)|^2).
    """
    a, b = _points("a", a), _points("b", b)
    perm = assignment(a, b)
    return float(np.sqrt(np.mean(np.sum((a - b[perm]) ** 2, axis=1))))


class W2AgainstFloor(NamedTuple):
    """w2: W2(T(x), y); floor: W2(y, y') for two independent target samples; excess: w2 - floor."""

    w2: float
    floor: float
    excess: float


def w2_against_floor(mapped, target, target_other) -> W2AgainstFloor:
    """W2 between mapped and target samples next to the target-vs-target floor.

    Args:
        mapped: [n, dim] T(x_i) for a source sample.
        target: [n, dim] a target sample.
        target_other: [n, dim] another, independent target sample.

    Returns:
        `W2AgainstFloor(w2, floor, excess)`.
    """
    w2, floor = assignment_w2(mapped, target), assignment_w2(target_other, target)
    return W2AgainstFloor(w2, floor, w2 - floor)


def assignment_map(x, target) -> np.ndarray:
    """The discrete optimal map of a sample: x_i -> target_{perm(i)} by exact assignment (the
    reference for problems without a closed-form map, such as `problems.disks`).

    Args:
        x: [n, dim] source points.
        target: [n, dim] target points.

    Returns:
        [n, dim] the assigned target point of each x_i.
    """
    x, target = _points("x", x), _points("target", target)
    return target[assignment(x, target)]
