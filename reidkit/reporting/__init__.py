"""Reports: curves, ranked-list pictures, metrics tables, an HTML index."""
from .plots import plot_curves
from .ranked_lists import ranked_lists_image
from .report import metrics_table, write_report

__all__ = ["plot_curves", "ranked_lists_image", "metrics_table", "write_report"]
