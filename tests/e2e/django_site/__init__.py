"""A minimal Django project for the interop tests (no database)."""
