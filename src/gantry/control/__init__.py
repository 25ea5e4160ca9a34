"""The control socket of a front (``[front] control``) and ``gantry ctl``: one JSON request
line, one JSON answer line, answered by the front master without blocking its loop."""
