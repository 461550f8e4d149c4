"""Building the paper's corruption grid: the project's builder vs a plain loop (benchmark 2).

7 corruptions x severities 1/3/5 for N 32x32 images with the ``imagecorruptions`` suite:
``demhec.corruptions.corruption_grid`` (all cores, streamed to a cache) against a plain
single-process loop over ``imagecorruptions.corrupt`` on the same images; then the same grid
again (a cache hit). Peak memory is the maximum resident set of this process and its workers.

    python benchmarks/corruption_build.py --n 10000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np
from imagecorruptions import corrupt

from demhec.corruptions import PAPER_CORRUPTIONS, PAPER_SEVERITIES, corruption_grid


def images(n: int) -> np.ndarray:
    """Natural-looking 32x32 images: the digits set tiled and tinted (offline, deterministic)."""
    from demhec.data import load_arrays

    base = load_arrays("digits", "train").images
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(base), n)
    tint = rng.uniform(0.3, 1.0, (n, 1, 1, 3))
    return (base[idx] * tint + rng.uniform(0, 60, (n, 1, 1, 3))).clip(0, 255).astype(np.uint8)


def peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--plain-n", type=int, default=None,
                   help="images for the plain loop (default: all); its time is scaled to --n")
    args = p.parse_args()
    x = images(args.n)
    cells = [(c, s) for c in PAPER_CORRUPTIONS for s in PAPER_SEVERITIES]
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        for _ in corruption_grid(x, PAPER_CORRUPTIONS, PAPER_SEVERITIES, suite="imagecorruptions",
                                 cache_dir=cache):
            pass
        built = time.perf_counter() - t
        t = time.perf_counter()
        for _c, _s, arr in corruption_grid(x, PAPER_CORRUPTIONS, PAPER_SEVERITIES,
                                           suite="imagecorruptions", cache_dir=cache):
            np.asarray(arr).sum()  # read every byte
        hit = time.perf_counter() - t
    m = args.plain_n or args.n
    t = time.perf_counter()
    for c, s in cells:
        for img in x[:m]:
            np.uint8(corrupt(img, corruption_name=c, severity=s))
    plain = (time.perf_counter() - t) * args.n / m
    print(f"{args.n} images x {len(cells)} cells: builder {built:.1f} s, cache hit {hit:.2f} s "
          f"({100 * hit / built:.2f}% of the build), plain loop {plain:.1f} s"
          f"{'' if m == args.n else f' (measured on {m} images, scaled)'}; peak memory {peak_mb():.0f} MB")
    print(f"speed-up: {plain / built:.2f}x")


if __name__ == "__main__":
    main()
