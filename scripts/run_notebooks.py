"""Execute (or only parameterise) every notebook in ``notebooks/`` with papermill.

``make demo`` / ``make paper`` execute them in the demo / paper profile; ``make test``
prepares them for the smoke profile (``--prepare-only``) and lets nbval execute them.

The executed notebooks of the ``demo`` and ``cpu`` profiles are written, with their outputs, to
``notebooks/executed/<profile>/`` (committed, for reading without running anything), the others
to ``build/notebooks/<profile>/``. Executed notebooks keep no timings and no absolute paths (the
papermill metadata is reduced to the parameters; an output naming a path of this machine fails
the run), so running them again on unchanged results changes no byte.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parents[1]
# The CPU reproduction's pages (09-13) render the committed results of the cpu profile (smoke: tests).
CPU_STUDY = ("09_cpu_short_budget.ipynb", "10_cpu_paper_schedule.ipynb", "11_cpu_ablations.ipynb",
             "12_cpu_controls_selection.ipynb", "13_cpu_test_time_adaptation.ipynb")
# Notebooks tied to some profiles; every other notebook runs in all of them.
NOTEBOOK_PROFILES = {**{name: ("cpu", "smoke") for name in CPU_STUDY},
                     # your own model on your ImageFolder in cpu/paper: run it by hand with data_root
                     "14_your_model.ipynb": ("smoke", "demo")}
# The cpu profile runs the notebooks its committed results (results/cpu/) render: Figure 2 on the
# real images, Table 1's ResNet-20 column, Figure 5, the comparison (Tables 3 and 4) and the CPU reproduction's pages.
PROFILE_NOTEBOOKS = {"cpu": ("01", "03", "05", "06", "07", *(name[:2] for name in CPU_STUDY))}
EXECUTED = ROOT / "notebooks" / "executed"
# Notebook outputs must not name this machine's folders.
_LOCAL_PATHS = tuple(dict.fromkeys(str(p) for p in (ROOT, ROOT.parent, Path.home(), Path(sys.prefix))
                                   if str(p) not in ("/", "")))


def merge_streams(outputs: list[dict]) -> list[dict]:
    """A cell's consecutive stream outputs of one name (stdout, stderr) as one output, its text
    split into lines as nbformat writes it: the kernel sends a cell's prints in one message or in
    several, depending on timing."""
    merged: list[dict] = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if out.get("output_type") != "stream":
            merged.append(out)
        elif prev is not None and prev.get("output_type") == "stream" and prev.get("name") == out.get("name"):
            prev["text"] = ("".join(prev["text"]) + "".join(out["text"])).splitlines(keepends=True)
        else:
            merged.append({**out, "text": "".join(out["text"]).splitlines(keepends=True)})
    return merged


def scrub(path: Path) -> None:
    """Drop what makes an executed notebook differ between identical runs (papermill's timings,
    its input/output paths, kernel warnings, execution counts, how the prints were split into
    messages) and fail when an output names a local folder."""
    nb = json.loads(path.read_text())
    pm = nb.get("metadata", {}).get("papermill", {})
    nb["metadata"]["papermill"] = {"parameters": pm.get("parameters", {})}
    nb["metadata"].pop("widgets", None)
    for cell in nb["cells"]:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell["id"] = "injected-parameters"  # papermill draws a new random id on every run
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if cell["cell_type"] == "code":  # outputs are the page; counts only say how it was run
            cell["execution_count"] = None
            cell["outputs"] = merge_streams(cell.get("outputs", []))
            for out in cell["outputs"]:
                if "execution_count" in out:
                    out["execution_count"] = None
    text = json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    leaks = [p for p in _LOCAL_PATHS if p in text]
    if leaks:
        raise SystemExit(f"{path}: the executed notebook names local folders {leaks}; fix the output")
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", required=True, choices=["smoke", "demo", "cpu", "paper"])
    p.add_argument("--out", default=None, help="folder for executed notebooks "
                   "(default: notebooks/executed/<profile> for demo and cpu, else build/notebooks/<profile>)")
    p.add_argument("--prepare-only", action="store_true", help="inject parameters, do not run")
    p.add_argument("--allow-train", action="store_true")
    p.add_argument("--download", action="store_true")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--figures-dir", default="figures")
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 03 09")
    args = p.parse_args(argv)
    logging.getLogger("papermill").setLevel(logging.WARNING)

    default = EXECUTED if args.profile in ("demo", "cpu") else ROOT / "build" / "notebooks"
    out = Path(args.out or default / args.profile)
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
    elif args.profile in PROFILE_NOTEBOOKS:
        notebooks = [nb for nb in notebooks if nb.name.startswith(PROFILE_NOTEBOOKS[args.profile])]
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
        if not args.prepare_only:
            scrub(out / nb.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
