"""A self-contained HTML report of evaluation runs, a demo, or a frequency analysis, written for a reader.

:func:`write_report` reads one or more directories and renders ``templates/report.html.j2`` (Jinja2,
autoescaped) into one HTML file: inline CSS, every image a base64 PNG ``data:`` URI, no scripts, a strict
Content-Security-Policy (anything external shows up as a console error in a browser).

The page: what was run (defence, plan, attack settings in words), the accuracy table with 95%
intervals and a plot of it, the paired comparison (exact McNemar) of runs that share test images, a
short generated reading, the example grid with a legend, one section per defence with only what applies
to it (no purifier settings for the undefended run), the frequency analysis when present, and the raw
configuration folded away at the end.

Accepted directories (detected in this order):

* **demo dir** — ``results.json`` written by ``freqpure demo`` (:class:`~freqpure.evaluation.demo_summary.DemoSummary`)
  and one run dir per defence (``none/``, ``diffpure/``, ``freqpure/``), optionally ``grid.png``;
* **run dir** — ``config.yaml``, ``results.json`` (any schema version, read with
  :func:`freqpure.evaluation.results.read_results`) and ``examples.npz``; ``samples.jsonl`` when present
  (for the paired comparison);
* **analysis dir** — ``analysis.json`` (+ the PNG plots it lists), as written by ``freqpure analyze``.

Several run dirs may be given at once (a comparison). A missing or unreadable file raises
``FileNotFoundError`` / ``ValueError`` naming the file.

The package by job: :mod:`~freqpure.report.inputs` (reading and checking the folders),
:mod:`~freqpure.report.figures` (images, spectra, plots), :mod:`~freqpure.report.words` (one run in words) and
:mod:`~freqpure.report.page` (the sections assembled into the page, written atomically).
"""

from freqpure.formatting import DEFENCES, TITLES
from freqpure.report.inputs import AnalysisData, ReportInputs, RunData, load_run
from freqpure.report.page import CSP, MAX_BYTES, REPORT_NAME, is_report, render_html, write_report

__all__ = ["write_report", "render_html", "ReportInputs", "RunData", "AnalysisData", "load_run", "DEFENCES",
           "TITLES", "REPORT_NAME", "MAX_BYTES", "CSP", "is_report"]
