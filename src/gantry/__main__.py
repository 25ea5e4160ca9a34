"""``python -m gantry``."""

from gantry.cli import main

main()
