"""The tour's recipe: the untrained model's accuracy, the control of a trained one."""

import numpy as np
import pytest

from workbench import data
from workbench.experiments import digits


@pytest.mark.standard_promotion  # optax Adam's bias correction is not strict-safe
def test_untrained_test_accuracy_is_the_initial_models_and_near_chance():
    fit = digits.fit_digits_mlp(8, 0.05, 60, seed=1, progress=False)
    untrained = digits.untrained_test_accuracy(fit, seed=1)
    _, test = data.load_digits(seed=1)
    logits = np.asarray(fit.model.predict_fn(fit.model.params, test.x))
    assert untrained == pytest.approx(np.mean(np.argmax(logits, axis=1) == np.asarray(test.y)), abs=1e-7)  # float32 mean
    assert untrained < 0.3 < fit.test_accuracy  # chance is 0.1; 60 Adam steps are far above it
