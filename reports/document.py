"""The comparison report: one PDF and one self-contained HTML page from stored runs (no model).

Pages, in order, each present when the runs hold its data:

    Comparison table · Needle heatmaps · Needle difference heatmaps · Loss by length ·
    Mixture composition · Provenance

Every page carries its title as text, so a PDF can be checked without looking at it
(:func:`inspect_pdf`, used by CI).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402

from harness import rundir  # noqa: E402
from harness.errors import UserError  # noqa: E402
from harness.reports import compare, paired  # noqa: E402
from harness.reports.figures import suite_pages  # noqa: E402

log = logging.getLogger("harness")


def titles() -> tuple[str, ...]:
    """Every page's title, in order: the table, the pages the registered suites name
    (harness.reports.figures.REPORT_PAGES), the mixtures, provenance."""
    return ("Comparison table", *(title for _, _, title in suite_pages()), "Mixture composition", "Provenance")


def _reference(col: compare.Collection, reference: str | None) -> str:
    names = [r.name for r in col.runs]
    reference = reference or names[0]
    if reference not in names:
        raise UserError(f"--reference: {reference!r} is not one of the runs; known: {', '.join(names)}")
    return reference


@dataclass
class Table:
    """The comparison table's contents, computed once for the PDF page and the HTML page."""

    values: object       # DataFrame: model x column
    widths: object       # DataFrame: half-widths of the 95% intervals
    verdicts: dict       # (model, column) -> better | worse | no detectable difference
    sentence: str        # the computed one-line summary against the reference
    labels: dict         # run name -> column header (pooled seeds counted)


def with_differences(values, widths, found: list[paired.Comparison]):
    """The table frames plus, after each effective-length row, a row of its paired differences from
    the reference ("Δ needle effective length (RULER 0.85)": ``+4K [+2K, +8K]`` per other model, the
    verdict mark staying on the length itself)."""
    lengths = [c for c in found if c.unit == "tokens"]
    if not lengths:
        return values, widths
    vals, wide = values.to_dict(orient="index"), widths.to_dict(orient="index")
    order = []
    for column in values.columns:
        order.append(column)
        mine = [c for c in lengths if c.column == column]
        if mine:
            order.append(compare.DELTA + column)
        for c in mine:
            vals[c.run][compare.DELTA + column], wide[c.run][compare.DELTA + column] = c.diff, (c.low, c.high)
    frame = lambda d: pd.DataFrame.from_dict(d, orient="index").reindex(index=values.index, columns=order)  # noqa: E731
    return frame(vals), frame(wide)


def comparison_table(col: compare.Collection, reference: str) -> Table:
    found = paired.compare(col, reference)
    values, widths = with_differences(*compare.tables(col), found)
    sentence = paired.summary_sentence(found, reference)
    sentence += "".join(f" Warning: {w}." for w in col.warnings())
    return Table(values, widths, {(c.run, c.column): c.verdict for c in found}, sentence,
                 col.labels())


def figures(col: compare.Collection, reference: str | None, table: Table | None = None) -> list[tuple[str, object]]:
    """(page title, matplotlib figure) for every page the collection supports."""
    reference = _reference(col, reference)
    table = table or comparison_table(col, reference)
    first, *_, mixtures, provenance = titles()
    pages = [(first, compare.figure_table(table.values, first, table.widths, table.verdicts, table.sentence,
                                          table.labels))]
    pages += [(title, page.draw(col, suite, reference)) for suite, page, title in suite_pages()]
    pages += [(mixtures, compare.figure_mixtures(col)), (provenance, compare.figure_provenance(col))]
    return [(title, fig) for title, fig in pages if fig is not None]


def write_report(paths: list[Path], pdf: Path, *, reference: str | None = None, console=None) -> Path:
    """Write ``pdf`` and the HTML page beside it (same stem); returns the PDF's path."""
    col = compare.collect(paths)
    for warning in col.warnings():
        log.warning("report: %s", warning)
    missing = col.missing()
    if missing:
        log.warning("runs differ in suites; the table and figures show what each has; missing: %s",
                    "; ".join(f"{name}: {', '.join(s)}" for name, s in missing.items()))
    reference = _reference(col, reference)
    table = comparison_table(col, reference)
    pages = figures(col, reference, table)
    pdf = Path(pdf)
    pdf.parent.mkdir(parents=True, exist_ok=True)
    pngs = []
    with rundir.atomic_path(pdf) as tmp:
        with PdfPages(tmp, metadata={"Title": "longctx-harness report", "Creator": "longctx-harness"}) as doc:
            for title, fig in pages:
                doc.savefig(fig)
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=110)
                pngs.append((title, base64.b64encode(buf.getvalue()).decode()))
                plt.close(fig)
    page = render_html(col, pngs, missing, table)
    html_path = pdf.with_suffix(".html")
    rundir.write_text(html_path, page)
    if console is not None:
        console.print(f"report: {pdf} ({len(pages)} pages) and {html_path}")
    return pdf


def render_html(col: compare.Collection, pngs: list[tuple[str, str]], missing: dict[str, list[str]],
                table: Table) -> str:
    """One self-contained page: the table as HTML, every figure inline, provenance as tables."""
    df = table.values
    cells = compare.cell_texts(df, table.widths, table.verdicts)
    table_html = ("<p>" + html.escape(table.sentence) + "</p><p>± : 95% interval ([low, high]: an effective "
                  "length's, in tokens; Δ: paired difference from the reference) · "
                  "▲ better, ▼ worse, = no detectable difference against the reference (paired, Holm-adjusted)</p>"
                  "<table class='numbers'><tr><th>metric</th>"
                  + "".join(f"<th>{html.escape(table.labels.get(r, r))}</th>" for r in df.index)
                  + "</tr>" + "".join("<tr>" + f"<td style='text-align:left'>{html.escape(row[0])}</td>"
                                      + "".join(f"<td>{html.escape(c)}</td>" for c in row[1:]) + "</tr>"
                                      for row in cells) + "</table>")
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>longctx-harness report</title>",
             "<style>body{font-family:sans-serif;margin:24px;max-width:1300px}"
             "table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd}"
             "td{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%;border:1px solid #eee}"
             ".warn{color:#a40}</style></head><body>",
             "<h1>longctx-harness report</h1>",
             f"<p>{len(col.runs)} models: {html.escape(', '.join(r.name for r in col.runs))}</p>"]
    if missing:
        parts.append("<p class='warn'>Suites missing: " + html.escape(
            "; ".join(f"{n}: {', '.join(s)}" for n, s in missing.items())) + "</p>")
    parts += ["<h2 id='table'>Comparison table</h2>", table_html]
    every = titles()
    for title, data in pngs:
        if title in (every[0], every[-1]):
            continue
        anchor = title.lower().replace(" ", "-")
        parts.append(f"<h2 id='{anchor}'>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("<h2 id='provenance'>Provenance</h2>")
    for title, rows in compare.provenance(col):
        parts.append(f"<h3>{html.escape(title)}</h3><table>")
        parts += ["<tr>" + "".join(f"<td style='text-align:left'>{html.escape(c)}</td>" for c in row) + "</tr>"
                  for row in rows]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def inspect_pdf(path: Path) -> list[dict]:
    """Per page: its title (the first of :func:`titles` in its text), how many images it embeds, its text."""
    from pypdf import PdfReader

    from pypdf.generic import ContentStream

    reader = PdfReader(str(path))
    longest_first = sorted(titles(), key=len, reverse=True)
    pages = []
    for page in reader.pages:
        text = page.extract_text() or ""
        # Longest first: "Needle difference heatmaps" also contains "heatmaps".
        title = next((t for t in longest_first if t in text), None)
        # Images drawn on this page (matplotlib shares one XObject dictionary across pages, so
        # count the page's own `Do` operators): each heatmap is one image; colour bars are vector.
        xobjects = page.get("/Resources", {}).get("/XObject", {}) or {}
        images = 0
        for operands, operator in ContentStream(page.get_contents(), reader).operations:
            if operator == b"Do" and operands[0] in xobjects:
                images += xobjects[operands[0]].get_object().get("/Subtype") == "/Image"
        pages.append({"title": title, "images": images, "text": text})
    return pages


def check(pdf: Path, models: int, seeds: int = 1) -> list[str]:
    """What is wrong with a report of ``models`` models whose first is the reference ([] if nothing);
    ``seeds``: each non-reference model pooled over that many training seeds.

    CI runs this on reports/ci-report.pdf: every page present, in order; one heatmap image per
    model on the heatmap page (one per non-reference model on the difference page); the table page
    opens with the computed comparison sentence, and its cells carry 95% intervals and one mark
    against the reference per compared cell of each non-reference model; pooled models are headed
    with their seed count, and the difference page notes which differences are within noise.
    """
    pages = inspect_pdf(pdf)
    problems = []
    expected_titles = list(titles())
    found = [p["title"] for p in pages]
    if found != expected_titles:
        problems.append(f"pages {found}, expected {expected_titles}")
    first = expected_titles[0]
    table = next((p["text"] for p in pages if p["title"] == first), "")
    if "Holm-adjusted over" not in table or "±" not in table:
        problems.append(f"{first}: no comparison sentence or no intervals")
    marks = sum(table.count(m.strip()) - 1 for m in compare.MARKS.values())  # less the legend's one each
    if marks < models - 1:
        problems.append(f"{first}: {marks} verdict marks, expected at least one per compared model")
    pooled = table.count(f"({seeds} seeds)")
    if seeds > 1 and pooled != models - 1:
        problems.append(f"{first}: {pooled} columns headed '({seeds} seeds)', expected {models - 1}")
    texts = {p["title"]: p["text"] for p in pages}
    images = {p["title"]: p["images"] for p in pages}
    for _, page, title in suite_pages():
        if page.note and title in texts and page.note not in texts[title]:
            problems.append(f"{title}: no note saying {page.note!r}")
        expected = page.images(models) if page.images else None
        if expected is not None and images.get(title) != expected:
            problems.append(f"{title}: {images.get(title)} images, expected {expected}")
    return problems


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Check a comparison report's pages and heatmap figures.")
    parser.add_argument("pdf", type=Path)
    parser.add_argument("--models", type=int, required=True, help="Models in the report (heatmaps expected).")
    parser.add_argument("--seeds", type=int, default=1, help="Training seeds pooled per non-reference model.")
    args = parser.parse_args()
    found = check(args.pdf, args.models, args.seeds)
    for line in found:
        print(f"report check: {line}", file=sys.stderr)
    print(f"report check: {args.pdf}: {len(inspect_pdf(args.pdf))} pages, "
          f"{'FAILED' if found else 'every expected page and figure present'}")
    sys.exit(1 if found else 0)
