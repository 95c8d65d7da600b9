#!/usr/bin/env python3
"""Build a golden set for `framegraph eval` from real photos that scikit-image ships.

Faces of the astronaut photo are pasted on backdrops of other real photos (engine/golden.py):
the ground truth is known by construction. Images go round-robin over the slices (clean,
low_light, blur, noise, jpeg, occlusion: perturbations of the same kind of frame; small: faces
30..60 px high). Writes DIR/images/*.png and DIR/annotations.json (format: engine/golden_set.py).

    scripts/make_golden.py out/golden --images 28
    scripts/make_golden.py out/golden-720p --images 56 --width 1280 --height 720 --seed 3
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.golden_set import SLICES, build_golden_set


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--images", type=int, default=28, help="number of images (round-robin over slices)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--slices", default=",".join(SLICES), help=f"comma-separated subset of {','.join(SLICES)}")
    args = p.parse_args(argv)
    slices = tuple(s for s in args.slices.split(",") if s)
    golden = build_golden_set(args.out_dir, args.images, args.seed, args.width, args.height, slices)
    per_slice = Counter(im.slice for im in golden.images)
    print(
        f"{args.out_dir}: {len(golden.images)} images, {len(golden.annotations)} faces; "
        + ", ".join(f"{k} {v}" for k, v in per_slice.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
