"""Shared fixtures: float64 for reference checks, an explicit PRNG key, strict dtype promotion."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# No persistent compilation cache in tests: every test compiles as a fresh CI machine does, and
# nothing is written to the user's ~/.cache. Inherited by the kernels the paper tests start; the
# tests of the cache itself point it at a temporary folder.
os.environ["WORKBENCH_JAX_CACHE"] = "off"

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
