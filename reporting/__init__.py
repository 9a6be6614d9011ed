"""A run's scores (metrics.py), plots (plots.py) and report (report.py)."""
