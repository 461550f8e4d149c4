"""Execute (or only parameterise) every notebook in ``notebooks/`` with papermill.

``make demo`` / ``make paper`` execute them in the demo / paper profile; ``make test``
prepares them for the smoke profile (``--prepare-only``) and lets nbval execute them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parents[1]
# Notebooks tied to some profiles; every other notebook runs in all of them.
NOTEBOOK_PROFILES = {"09_cpu_reproduction.ipynb": ("cpu", "smoke"),
                     # your own model on your ImageFolder in cpu/paper: run it by hand with data_root
                     "10_your_model.ipynb": ("smoke", "demo")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", required=True, choices=["smoke", "demo", "cpu", "paper"])
    p.add_argument("--out", default=None, help="folder for executed notebooks "
                   "(default: build/notebooks/<profile>)")
    p.add_argument("--prepare-only", action="store_true", help="inject parameters, do not run")
    p.add_argument("--allow-train", action="store_true")
    p.add_argument("--download", action="store_true")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--figures-dir", default="figures")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 03 09")
    args = p.parse_args(argv)
    logging.getLogger("papermill").setLevel(logging.WARNING)

    out = Path(args.out or ROOT / "build" / "notebooks" / args.profile)
    out.mkdir(parents=True, exist_ok=True)
    params = {"profile": args.profile, "results_dir": args.results_dir,
              "figures_dir": args.figures_dir, "device": args.device}
    if args.allow_train:
        params["allow_train"] = True
    if args.download:
        params["download"] = True
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name.startswith(tuple(args.only))]
    skipped = [nb.name for nb in notebooks if args.profile not in NOTEBOOK_PROFILES.get(nb.name, (args.profile,))]
    if skipped:
        print(f"skipping {', '.join(skipped)} (not made for the {args.profile} profile)", flush=True)
    notebooks = [nb for nb in notebooks if nb.name not in skipped]
    if not notebooks:
        print("no notebooks matched", file=sys.stderr)
        return 1
    for nb in notebooks:
        print(f"{'preparing' if args.prepare_only else 'running'} {nb.name} ({args.profile})",
              flush=True)
        pm.execute_notebook(nb, out / nb.name, parameters=params, kernel_name="python3",
                            prepare_only=args.prepare_only, progress_bar=False, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
