"""The external HTTP service of the multi-app example: any HTTP server on 127.0.0.1:8001.

Run it next to the stack with gunicorn (or `gantry serve --http 127.0.0.1:8001 api:app`)::

    gunicorn --chdir api --bind 127.0.0.1:8001 api:app
"""

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.get("/api/status")
def status() -> Response:
    return jsonify(service="api", path=request.path, host=request.host)
