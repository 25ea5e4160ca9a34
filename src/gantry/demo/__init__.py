"""The built-in demo: a Flask app with ``/hello`` and a small static folder."""

from pathlib import Path

from flask import Flask

STATIC_DIR = Path(__file__).parent / "static"

app = Flask(__name__, static_folder=None)


@app.route("/hello")
def hello_world() -> str:
    """Answer the classic greeting."""
    return "Hello World!"
