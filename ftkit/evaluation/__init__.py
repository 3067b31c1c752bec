"""Held-out evaluation: predicting, metrics, statistics, reports, plots and `ftkit compare`."""
