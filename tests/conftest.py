import os

import pytest

from helpers import SmallNet, small_data

# Triton decides at import whether its kernels run on a GPU or in its CPU interpreter; these tests have no GPU, so
# the Triton rule's kernel runs interpreted (tests/test_triton_conv.py compiles it for GPUs in a subprocess)
os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def tune_small_tiles():
    """The vmap evaluator's setting that lets "auto" tune on the tests' small tiles (tens of points) as it does on
    a plane's 512-point tiles."""
    return {"auto_min_points": 32}


@pytest.fixture
def every_rule_measured():
    """The vmap evaluator's setting for "auto" as once every layer rule has a device measurement: it then times
    them all."""
    from landscape_widgets.gpu import RULES

    return {"measured_rules": RULES}


@pytest.fixture
def small():
    model = SmallNet()
    model.train()  # the user left it in train mode: we must neither use nor change that
    return model, small_data()


@pytest.fixture(scope="module")
def mlp_case():
    """The 160-parameter MLP of _hessian_cases with its data, dense float64 Hessian and eigenvalues."""
    import numpy as np
    from torch import nn

    from _hessian_cases import classification_data, dense_hessian, small_mlp

    model = small_mlp()
    x, y = classification_data(model)
    H = dense_hessian(model, nn.CrossEntropyLoss(), x, y)
    return model, x, y, H, np.linalg.eigvalsh(H)


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread (on a loaded 2-core machine a second OpenMP thread turns microsecond kernels
    into milliseconds, see tests/zoo/conftest.py), restored after each test.  Modules use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
