import pytest

from helpers import SmallNet, small_data


@pytest.fixture
def small():
    model = SmallNet()
    model.train()  # the user left it in train mode: we must neither use nor change that
    return model, small_data()
