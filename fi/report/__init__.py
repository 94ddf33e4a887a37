"""What a run shows: aggregated tables, seaborn figures (matplotlib's process-wide state kept in
fi.report.figures), the run's summary and the provenance of every table."""
