"""Report: the run's self-contained HTML report and its model card.

Both read the run's summary (the content of ``metrics.json``; its shape is documented
in :mod:`modelyard.report._html`) and escape every string that came from data or spec::

    from modelyard.report import write_html, write_model_card
    write_html(summary, run_dir / "report.html")
    write_model_card(summary, run_dir / "model_card.md")
"""

from modelyard.report._card import render_model_card, write_model_card
from modelyard.report._html import render_html, write_html

__all__ = ["render_html", "render_model_card", "write_html", "write_model_card"]
