"""Build the results site: static HTML of every executed notebook page, and a front page.

    .venv/bin/python scripts/build_site.py            # -> build/site/index.html (make site)

The pages are the committed executed notebooks (``notebooks/executed/<profile>/*.ipynb``)
converted by nbconvert's HTML exporter with every figure embedded, so the site is a folder of
self-contained files that any static host serves and that needs no training, no kernel and no
network to build. nbconvert because it is already the notebooks' own tool (papermill and nbval
depend on it), renders exactly what the executed notebook holds, and builds all pages in seconds;
Jupyter Book or MyST would add a site generator and a configuration for the same pages.

The front page carries the project's findings (``demhec.experiments.findings``: each sentence with
the evidence it rests on), the comparison with the methods of the paper's Tables 3-4 as its files
stand, the paper-versus-here tables that the executed pages saved under ``results/<profile>/tables``,
and a link to every page. Nothing on it is typed: it is rendered from the committed result files.
"""

from __future__ import annotations

import argparse
import html
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
from nbconvert import HTMLExporter  # noqa: E402

from demhec.experiments.findings import findings_table, headline  # noqa: E402

PROFILES = {"cpu": "real CIFAR-10 images (the JPEG mirror), on this machine's CPUs",
            "demo": "the embedded digits dataset (offline, minutes)"}
# The paper-versus-here tables the executed pages save, shown on the front page when present.
PAPER_TABLES = {"cpu": ["table1_cifar10_jpeg_resnet20_cifar-c", "comparison_table4", "comparison_ranked"]}
STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;line-height:1.45}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.2rem .45rem}
th{background:#f3f3f3}code{background:#f5f5f5;padding:0 .2rem}.evidence{font-size:.8rem;color:#555}"""


def _title(nb: nbformat.NotebookNode, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("#"):
            return cell.source.splitlines()[0].lstrip("#").strip()
    return fallback


def build_pages(out: Path) -> dict[str, list[tuple[str, str]]]:
    """Convert every executed notebook; ``{profile: [(href, title), ...]}``."""
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    pages: dict[str, list[tuple[str, str]]] = {}
    for profile in PROFILES:
        for path in sorted((ROOT / "notebooks" / "executed" / profile).glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            body, _ = exporter.from_notebook_node(nb)
            href = f"{profile}/{path.stem}.html"
            (out / profile).mkdir(parents=True, exist_ok=True)
            (out / href).write_text(body, encoding="utf-8")
            pages.setdefault(profile, []).append((href, _title(nb, path.stem)))
    return pages


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.2f}", border=0)


def front_page(pages: dict[str, list[tuple[str, str]]], results: Path) -> str:
    parts = ["<h1>demhec: what we found</h1>",
             "<p>Reference implementation of <em>Dem-HEC: High-Entropy Contrastive Fine-Tuning for Countering "
             "Natural Corruptions</em>. Every number on this page is rendered from the committed result files; "
             "each finding names the evidence it rests on.</p>",
             "<h2>Findings</h2>", _table_html(findings_table(results))]
    if (verdict := headline(results)) is not None:
        parts[2:2] = ["<h2>Verdict</h2>", f"<p>{html.escape(verdict, quote=False)}</p>"]
    for profile, stems in PAPER_TABLES.items():
        for stem in stems:
            path = results / profile / "tables" / f"{stem}.csv"
            if path.is_file():
                parts += [f"<h3>{html.escape(stem.replace('_', ' '))} ({profile})</h3>",
                          _table_html(pd.read_csv(path))]
    parts.append("<h2>Pages</h2>")
    for profile, items in pages.items():
        parts.append(f"<h3>{profile}: {html.escape(PROFILES[profile])}</h3><ul>")
        parts += [f'<li><a href="{href}">{html.escape(title)}</a></li>' for href, title in items]
        parts.append("</ul>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>demhec: results</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    p.add_argument("--results-dir", type=Path, default=ROOT / "results")
    args = p.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    pages = build_pages(args.out)
    (args.out / "index.html").write_text(front_page(pages, args.results_dir), encoding="utf-8")
    print(f"wrote {args.out / 'index.html'} and {sum(len(v) for v in pages.values())} pages")


if __name__ == "__main__":
    main()
