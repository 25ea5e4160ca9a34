"""End-to-end tests with real peers: Flask, Django, nginx."""
