import pytest
from support.model_inputs import small_model as _small_model


@pytest.fixture
def small_model():
    return _small_model()
