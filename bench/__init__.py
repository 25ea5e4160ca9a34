"""Gantry benchmark harness: compares `gantry serve` with uWSGI, gunicorn, waitress, granian."""
