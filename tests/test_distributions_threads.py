"""W_seed does not depend on the number of BLAS threads (issue 20.16): the spectral-radius rule's
eigenvalue / singular-value step runs on one BLAS thread, so a float64 spectral_normal draw is
bit-identical under 1 and 2 threads (and the same as it was with one thread: test_distributions_bits)."""

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from reservoir_depth.distributions import DistributionSpec, draw

SHAPES = [(256, 256), (400, 400), (300, 200)]  # large enough for LAPACK's blocked, threaded paths


def blas_threads_available() -> bool:
    with threadpool_limits(limits=2, user_api="blas"):
        return any(lib["num_threads"] >= 2 for lib in threadpool_info() if lib["user_api"] == "blas")


@pytest.mark.skipif(not blas_threads_available(), reason="no BLAS here runs more than one thread")
@pytest.mark.parametrize("name", ["spectral_normal", "normal"])
@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_radius_draws_are_bit_identical_under_1_and_2_blas_threads(name, shape):
    spec = DistributionSpec(name, scaling="spectral_radius", rho=0.9)
    draws = []
    for threads in (1, 2, 1):
        with threadpool_limits(limits=threads, user_api="blas"):
            draws.append(draw(spec, shape, 3, dtype=torch.float64))
    assert all(torch.equal(draws[0], d) for d in draws[1:])
