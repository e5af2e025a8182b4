"""The Philox4x32-10 engine of draw version 2 (Salmon et al. 2011): counter-based words, uniforms and normals.

Entry i of substream j is word i % 4 of Philox4x32-10 of the counter (i // 4, 0, j, 0) under a 64-bit key,
written with int64 tensor (or uint64 numpy) ops that give identical bits on the CPU and CUDA; uniforms are
(word + 1/2) 2^-32 and normals Box-Muller of uniform pairs. Knows nothing of families or specs.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_CHUNK = {"cpu": 1 << 14, "device": 1 << 22}  # blocks per pass: bounds the temporaries, not the result


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    """Philox4x32-10 (Salmon et al. 2011) of the counter (c0..c3) under the key (k0, k1).

    Counter words are numpy uint64 arrays, int64 tensors or Python ints holding
    uint32 values: the 32 x 32 -> 64-bit products wrap modulo 2**64 (in int64 with
    the same bits as in uint64), and the high and low words are cut out with a shift
    and a mask, so every backend and device gives identical bits (Python ints give
    the reference result).
    """
    for _ in range(rounds):
        p0, p1 = c0 * PHILOX_M[0], c2 * PHILOX_M[1]
        c0, c1, c2, c3 = ((p1 >> 32) & MASK32) ^ c1 ^ k0, p1 & MASK32, ((p0 >> 32) & MASK32) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
    return c0, c1, c2, c3


def _philox_words(b: torch.Tensor, sub, k0, k1) -> torch.Tensor:
    """The 4 words of each counter block b (int64 block indices) of substream ``sub``, flattened."""
    return torch.stack(philox4x32(b & MASK32, b >> 32, sub, 0, k0, k1), dim=1).view(-1)


def _uniform_of(w):
    """U(0, 1) in float64 from uint32 words (a tensor or a numpy array): (w + 1/2) 2^-32, never 0 or 1 (exact)."""
    return ((w.to(torch.float64) if isinstance(w, torch.Tensor) else w.astype(np.float64)) + 0.5) * 2.0**-32


def _box_muller(u):
    """N(0, 1) from an even number of uniforms (a tensor or a numpy array): entries 2m, 2m+1 from uniforms
    2m, 2m+1 (torch and numpy math libraries may differ in the last bit)."""
    xp = torch if isinstance(u, torch.Tensor) else np
    u = u.reshape(-1, 2)
    r, theta = xp.sqrt(-2.0 * xp.log(u[:, 0])), (2.0 * math.pi) * u[:, 1]
    return xp.stack([r * xp.cos(theta), r * xp.sin(theta)], 1).reshape(-1)


def _philox_uniforms(b: torch.Tensor, sub, k0, k1) -> torch.Tensor:
    return _uniform_of(_philox_words(b, sub, k0, k1))


def _philox_normals(b: torch.Tensor, sub, k0, k1) -> torch.Tensor:
    return _box_muller(_uniform_of(_philox_words(b, sub, k0, k1)))


_BLOCK_FNS: dict[str, Callable[..., torch.Tensor]] = {  # the device path's block function of each kind
    "words": _philox_words, "uniform": _philox_uniforms, "normal": _philox_normals}
COMPILE_ON_DEVICE = True  # fuse the block functions with torch.compile on CUDA (eager if that fails)
_compiled: dict[str, Callable[..., torch.Tensor] | None] = {}


def _block_fn(kind: str, device: torch.device) -> Callable[..., torch.Tensor]:
    if device.type != "cuda" or not COMPILE_ON_DEVICE or _compiled.get(kind, 0) is None:
        return _BLOCK_FNS[kind]
    if kind not in _compiled:
        _compiled[kind] = torch.compile(_BLOCK_FNS[kind], dynamic=True)
    return _compiled[kind]


class Stream:
    """Counter-based random numbers of one version-2 draw of ``n`` entries on ``device``.

    Substream j, entry i = word i % 4 of Philox4x32-10(counter (i // 4, 0, j, 0), key);
    uniforms are (word + 1/2) 2^-32 and normals Box-Muller of uniform pairs (2m, 2m+1).
    Any entry is computable on its own, on any device, in any chunking. On the CPU the
    counter rounds and transforms run on numpy arrays in cache-sized chunks (about twice
    as fast as torch int64 ops there); on CUDA on torch int64 tensors, fused by
    torch.compile. Words and uniforms are identical bits on every path; normals agree to
    the last bit or so (the math libraries' log / cos / sin).
    """

    def __init__(self, key: int, n: int, device: torch.device | str | None = None) -> None:
        self.key, self.n = int(key), int(n)
        self.device = torch.device(device if device is not None else "cpu")

    def _numpy(self, kind: str, sub: int) -> torch.Tensor:
        """CPU path: counter rounds and the block's transform on numpy arrays, in cache-sized chunks spread
        over torch's thread count (each entry is computed from its own counter, so chunking changes nothing)."""
        blocks, (k0, k1) = -(-self.n // 4), (self.key & MASK32, self.key >> 32)
        out = np.empty(4 * blocks, dtype=np.int64 if kind == "words" else np.float64)
        to = {"words": lambda w: w, "uniform": _uniform_of, "normal": lambda w: _box_muller(_uniform_of(w))}[kind]
        def chunk(start: int) -> None:
            b = np.arange(start, min(start + PHILOX_CHUNK["cpu"], blocks), dtype=np.uint64)
            w = np.stack(philox4x32(b & MASK32, b >> 32, int(sub), 0, k0, k1), axis=1).view(np.int64).reshape(-1)
            out[4 * start:4 * (start + len(b))] = to(w)

        starts = range(0, blocks, PHILOX_CHUNK["cpu"])
        threads = min(torch.get_num_threads(), len(starts))
        if threads > 1:  # numpy releases the GIL: chunks in parallel on torch's thread count
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(chunk, starts))
        else:
            for start in starts:
                chunk(start)
        return torch.from_numpy(out).to(self.device)

    def _torch(self, kind: str, sub: int) -> torch.Tensor:
        blocks, dev = -(-self.n // 4), self.device
        fn = _block_fn(kind, dev)
        k0, k1, j = (torch.tensor(v, dtype=torch.int64, device=dev) for v in (self.key & MASK32, self.key >> 32, sub))
        out = torch.empty(4 * blocks, dtype=torch.int64 if kind == "words" else torch.float64, device=dev)
        for start in range(0, blocks, PHILOX_CHUNK["device"]):
            b = torch.arange(start, min(start + PHILOX_CHUNK["device"], blocks), dtype=torch.int64, device=dev)
            try:
                out[4 * start:4 * (start + len(b))] = fn(b, j, k0, k1)
            except Exception:  # no working compiler (e.g. no Triton): the eager ops give the same bits
                if fn is _BLOCK_FNS[kind]:
                    raise
                _compiled[kind], fn = None, _BLOCK_FNS[kind]
                out[4 * start:4 * (start + len(b))] = fn(b, j, k0, k1)
        return out

    def _all(self, kind: str, sub: int, backend: str | None) -> torch.Tensor:
        backend = backend or ("numpy" if self.device.type == "cpu" else "torch")
        if backend == "torch":
            return self._torch(kind, sub)[:self.n]
        return self._numpy(kind, sub)[:self.n]

    def words(self, sub: int = 0, backend: str | None = None) -> torch.Tensor:
        """The uint32 words of substream ``sub`` as int64 (``backend`` "numpy" / "torch" forces one, for tests)."""
        return self._all("words", sub, backend)

    def uniform(self, sub: int = 0, backend: str | None = None) -> torch.Tensor:
        """U(0, 1) in float64, (w + 1/2) 2^-32: never 0 or 1."""
        return self._all("uniform", sub, backend)

    def normal(self, sub: int = 0, backend: str | None = None) -> torch.Tensor:
        """N(0, 1) in float64 by Box-Muller: entries 2m, 2m+1 from uniforms 2m, 2m+1 of substream ``sub``."""
        return self._all("normal", sub, backend)
