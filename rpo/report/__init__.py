"""Tables and figures of the paper, built from run outputs alone (docs/design.md "Run outputs")."""
from rpo.report.collect import collect_alpacaeval, collect_runs, list_trained_runs, load_metrics
from rpo.report.figures import (plot_batch_size, plot_tau, plot_training_curves, plot_weight_heatmap,
                                plot_winrate_bars, read_weight_example, weight_example)
from rpo.report.tables import Table, table1, table2, table3, table4, weighting, write_table

__all__ = [
    "collect_runs", "collect_alpacaeval", "list_trained_runs", "load_metrics",
    "Table", "table1", "table2", "table3", "table4", "weighting", "write_table",
    "plot_winrate_bars", "plot_tau", "plot_batch_size", "plot_training_curves", "plot_weight_heatmap",
    "weight_example", "read_weight_example",
]
