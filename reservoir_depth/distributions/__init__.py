"""Random-matrix families, scaling rules and seeded sampling of W_seed.

One job per module: ``seeds`` (sha256 seeding, numpy's PCG64, torch_rng), ``philox``
(the counter-based engine of version 2), ``laws`` and ``families`` (the family registry:
name -> samplers of both versions, default parameters, validation, reference law),
``scaling`` (fan-in, spectral radius, none), ``spec`` (DistributionSpec) and ``draw``
(raw_sample, sample, draw: the checked draw). A :class:`DistributionSpec` binds a family to parameters, a
scaling rule and a draw version; :func:`draw` turns (spec, shape, seed) into a
frozen W_seed. Each layer's seed is derived from (root seed, qualified layer
name) by :func:`layer_seed`, so adding a layer never changes another layer's draw.

Draw versions (``DistributionSpec.version``):

* 2, the default: a counter-based generator. Entry i of a draw is computed from
  Philox4x32-10 (Salmon et al. 2011) of the counter (i // 4, substream) under a
  64-bit key derived from (layer seed, family name, parameters, shape), written
  with int64 tensor ops that give identical bits on the CPU and CUDA, then the
  family's transform (Box-Muller, inverse CDF, ...) in float64 on the same
  device (on CUDA fused by torch.compile when it works, else eager: same bits;
  ``philox.COMPILE_ON_DEVICE``). Families draw from independent streams (normal and
  kaiming_normal at one seed are uncorrelated), and a draw can be generated directly on a GPU
  (``draw(..., device="cuda")``), agreeing with the CPU draw to float64 rounding
  (far below ``adapter_format.FINGERPRINT_RTOL``). truncated_normal, student_t and beta
  transform their uniforms with scipy's inverse CDF, and orthogonal takes the
  QR of its normals with numpy, on the CPU (the result is then moved to the
  device); a registered family without a ``transform`` samples (``numpy_sample``) with numpy's PCG64
  seeded by the same key. The shape is part of the key: a (128, 64) draw does
  not contain the (64, 64) draw (no nested scaffolds across widths), so draws
  at different widths are independent.
* 1, the legacy draw, kept byte-identical so that adapter files and stored study
  results made before version 2 regenerate the same W_seed: numpy's PCG64
  seeded by the layer seed alone, float64 on the CPU, cast to float32. All
  families share that stream (normal, kaiming_normal, xavier_normal and
  spectral_normal at one seed are one matrix up to scale; uniform,
  kaiming_uniform and xavier_uniform likewise), and a (128, 64) draw of an
  element-wise family contains the (64, 64) draw as its top block. A spec dict
  without "version" (every file written before versions existed) is version 1;
  ``to_dict()`` omits version 1, so those files and run ids keep their hashes.

Every draw is checked: a non-finite entry, or an all-zero draw from a family
that is not all-zero by construction, is an error naming the family, its
parameters and the shape.
"""

from ..checks import is_number
from .draw import draw, raw_sample, sample, stream_key
from .families import DISTRIBUTIONS, Family, register
from .philox import PHILOX_CHUNK, Stream, philox4x32
from .scaling import SCALINGS, fans, spectral_radius
from .seeds import layer_seed, rng_for, torch_rng
from .spec import DEFAULT_VERSION, DRAW_VERSIONS, DistributionSpec, as_spec

__all__ = [
    "DEFAULT_VERSION", "DISTRIBUTIONS", "DRAW_VERSIONS", "DistributionSpec", "Family", "PHILOX_CHUNK", "SCALINGS",
    "Stream", "as_spec", "draw", "fans", "is_number", "layer_seed", "philox4x32", "raw_sample", "register",
    "rng_for", "sample", "spectral_radius", "stream_key", "torch_rng",
]
