import os

import pytest
import torch
from hypothesis import settings

# CI explores a fixed set of examples (statistical tolerances never flake there);
# locally hypothesis draws new examples every run.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from reservoir_depth.data import Dataset


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make_blobs(n_train=256, n_test=128, d=16, n_classes=3, seed=0) -> Dataset:
    """A small separable classification task (Gaussian blobs), as a Dataset."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(n_classes, d, generator=g)

    def split(n):
        y = torch.randint(0, n_classes, (n,), generator=g)
        return centres[y] + torch.randn(n, d, generator=g), y

    Xtr, ytr = split(n_train)
    Xte, yte = split(n_test)
    return Dataset("blobs", Xtr, ytr, Xte, yte, n_classes)


@pytest.fixture
def blobs() -> Dataset:
    return make_blobs()
