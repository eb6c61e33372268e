"""The ``workers.targets`` entry point exposes the same functions as the modules behind it."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import workers.targets as targets
from workers import channels, lsds, weights


def test_examples_run():
    failures, tried = doctest.testmod(targets)
    assert tried > 0 and failures == 0


@pytest.mark.parametrize("name", targets.__all__)
def test_every_exported_name_is_the_module_function(name):
    owner = next(module for module in (lsds, channels, weights) if hasattr(module, name))
    assert getattr(targets, name) is getattr(owner, name)


def test_logconv_is_lazy_and_the_same_class():
    torch = pytest.importorskip("torch")
    assert targets.LogConv is weights.LogConv
    labels = torch.zeros((1, 12, 12), dtype=torch.int64)
    labels[0, 3:9, 3:9] = 1
    labels[0, 3:9, 9:] = 2
    distances = targets.LogConv(dtype=torch.float64)(labels).numpy()
    expected = weights.logconv_instance_distances(labels.numpy())
    np.testing.assert_allclose(distances, expected, atol=1e-9)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_target"):
        targets.no_such_target  # noqa: B018
