"""Fixtures shared by the decoding-method tests of this folder."""

from __future__ import annotations

import pytest
from decoding_fixtures import encode, shared_backbone


@pytest.fixture(scope="module")
def setup():
    """The shared tiny backbone and three encoded samples: ``(backbone, samples, images, batch)``."""
    backbone = shared_backbone()
    samples, images, batch = encode(backbone, 3)
    return backbone, samples, images, batch
