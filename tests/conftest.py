"""Shared fixtures of the server, client and deploy tests (tests/test_server_*.py etc.)."""

from __future__ import annotations

import pytest
import serving_utils as su


@pytest.fixture(scope="session")
def sjff_models():
    """{"analog": small analog .onnx export, "spike": small spike .nir export} (cached)."""
    return su.trained_models()


@pytest.fixture(scope="session")
def mnist_samples():
    """(uint8 images [256, 784], labels [256]) from the MNIST test split."""
    return su.mnist_test(256)


@pytest.fixture(scope="session")
def token_path(tmp_path_factory):
    return su.write_token(tmp_path_factory.mktemp("token") / "token.txt")
