"""Monitoring: uWSGI-compatible stats JSON, Prometheus text, and the ``gantry top`` client."""
