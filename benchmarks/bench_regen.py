"""Regenerating a backbone from its seed: the legacy numpy draw (version 1) against the
counter-based draw (version 2, the default), side by side, in GB/s of float32 W_seed.

    python benchmarks/bench_regen.py                       # 1e9 parameters (version 1 on 3e7)
    python benchmarks/bench_regen.py --params 2e8 --family normal --layer 4096
    python benchmarks/bench_regen.py --devices cpu cuda --v1-params 2e7

The backbone is a stack of (layer, layer) weights with ``params`` entries in all, each drawn
with ``draw(spec, shape, layer_seed(0, name))``, as a scaffold regenerates them. Version 1
always draws on the CPU with numpy (float64, cast to float32; on CUDA it is then copied to
the device); version 2 generates on the device itself. ``--v1-params`` caps the (slow)
version-1 pass, whose rate is reported per byte like the other. Prints a table; nothing is
asserted. Times are wall-clock, after one warm-up layer, with torch's default thread count
(``--threads`` sets it).
"""

from __future__ import annotations

import argparse
import time

import torch

from reservoir_depth.distributions import DistributionSpec, draw, layer_seed


def regenerate(spec: DistributionSpec, params: int, layer: int, device: str) -> tuple[float, int]:
    """Seconds to draw ``params`` entries as (layer, layer) float32 weights on ``device``, and the count drawn."""
    n_layers = max(1, round(params / layer**2))
    draw(spec, (layer, layer), layer_seed(0, "warmup"), device=device)  # warm-up (kernels, allocator)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(n_layers):
        w = draw(spec, (layer, layer), layer_seed(0, f"layers.{i}"), device=device)
        del w
    sync()
    return time.perf_counter() - t0, n_layers * layer**2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=float, default=1e9, help="backbone size (default 1e9)")
    p.add_argument("--v1-params", type=float, default=3e7,
                   help="size of the version-1 pass (default 3e7: numpy on the CPU, its rate per byte does not grow)")
    p.add_argument("--layer", type=int, default=4096, help="each weight is (layer, layer)")
    p.add_argument("--family", default="normal")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = torch.cuda.is_available()
    params = int(a.params)
    v1_params = int(a.v1_params)
    devices = a.devices or (["cpu", "cuda"] if cuda else ["cpu"])
    print(f"family {a.family}, layers ({a.layer}, {a.layer}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()}" if cuda else ""))
    print(f"{'device':8} {'version':>7} {'params':>12} {'seconds':>9} {'GB/s':>8}")
    for device in devices:
        rates = {}
        for version, n in ((1, v1_params), (2, params)):
            seconds, drawn = regenerate(DistributionSpec(a.family, version=version), n, a.layer, device)
            rates[version] = 4 * drawn / seconds / 1e9
            print(f"{device:8} {version:>7} {drawn:>12.3g} {seconds:>9.2f} {rates[version]:>8.3f}", flush=True)
        print(f"{device:8} version 2 / version 1: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
