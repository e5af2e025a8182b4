import pytest
import torch

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
