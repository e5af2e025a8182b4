import os
import subprocess
import sys

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


def torchrun(args, nproc: int = 2, cwd=None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node nproc *args`` (one thread per process);
    asserts it exits 0 (showing the end of stderr) and returns the result. nproc = 1 runs ``python *args``."""
    launch = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    res = subprocess.run([*launch, *map(str, args)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


TRAIN_TINY = ["-m", "reservoir_depth", "train", "--data", "digits", "--hidden", "tiny", "--rank", "2", "--epochs", "1",
              "--no-progress"]
"""`reservoir-depth train` on digits, tiny MLP, r = 2, one epoch: the command line the torchrun tests launch."""
