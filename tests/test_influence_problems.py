"""The fitted digits logistic regression the influence papers start from."""

import numpy as np
import pytest

from workbench.experiments.influence import fit_digits_logistic


def test_fit_digits_logistic_reaches_the_optimum():
    problem = fit_digits_logistic(60, 7, l2=0.01, seed=1)
    assert len(problem.train) == 60 and len(problem.test) == 7
    assert problem.grad_norm < 1e-9
    assert np.asarray(problem.params["linear"]["kernel"]).dtype == np.float64
    with pytest.raises(ValueError, match="n_train must be in"):
        fit_digits_logistic(1, 7, l2=0.01)
    with pytest.raises(ValueError, match="n_test"):
        fit_digits_logistic(60, 0, l2=0.01)
