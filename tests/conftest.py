"""Shared fixtures: float64 for reference checks, an explicit PRNG key, strict dtype promotion."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(autouse=True)
def strict_promotion(request):
    # Strict promotion catches silent float32/float64 mixing in our code. Third-party code that
    # is not strict-safe (optax's Adam bias correction) opts out with @pytest.mark.standard_promotion.
    mode = "standard" if request.node.get_closest_marker("standard_promotion") else "strict"
    with jax.numpy_dtype_promotion(mode):
        yield
