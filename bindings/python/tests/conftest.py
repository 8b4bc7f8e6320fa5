import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def gen():
    """A seeded generator; the seed is printed so a failure can be replayed."""
    seed = int(os.environ.get("UNIREWARD_TEST_SEED", torch.randint(0, 2**31 - 1, ()).item()))
    print(f"seed {seed} (UNIREWARD_TEST_SEED={seed} replays it)")
    return torch.Generator().manual_seed(seed)


def close(actual, expected, dtype=torch.float32, scale=1.0):
    """Asserts agreement within the library's tolerances: 1e-5 relative in float32, 1e-2 in bf16/f16."""
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol * scale)
