"""The page a headless browser loads through `gantry up` (tests/test_browser.py): the app
answers the HTML, the front serves its stylesheet and script from disk."""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>gantry</title>
<link rel="stylesheet" href="/assets/app.css">
<script src="/assets/app.js" defer></script>
</head><body><p id="styled">styled</p><p id="out">script did not run</p></body></html>
"""


@app.route("/")
def page() -> tuple[str, int, dict[str, str]]:
    return PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}
