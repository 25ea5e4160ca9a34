"""The whole stack's stats: every part's stats document, merged into one.

Each part's master serves its own document (uWSGI's format) on a unix socket in
the runtime directory, one per generation (a reload runs two side by side for a
moment; the stack's document shows the one serving). When asked, the supervisor
reads them all from its loop, without waiting on any (a part that does not answer
within a second is listed as down), and answers with one document whose workers
carry their ``pool`` ("front" or the app's name), so ``gantry top``, uwsgitop and
Prometheus see the whole stack.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from gantry import __version__
from gantry.process.answers import DocumentFetch
from gantry.process.loop import ProcessLoop
from gantry.stack.part import Part
from gantry.stack.php import parse_status, status_request
from gantry.stats.prometheus import render_metric_rows
from gantry.stats.serve import http_text_answer

__all__ = ["StackStats", "stack_document"]

#: seconds a part's master has to send its document
PART_TIMEOUT = 1.0

Deliver = Callable[[bytes], None]


def stack_document(parts: list[tuple[Part, dict[str, Any]]], started: float) -> dict[str, Any]:
    """One stats document from each serving part and the document it sent ({}: down)."""
    workers: list[dict[str, Any]] = []
    pools: list[dict[str, Any]] = []
    sockets: list[dict[str, Any]] = []
    caches: list[dict[str, Any]] = []
    for part, doc in parts:
        caches += doc.get("caches", [])  # the front's zones
        for worker in doc.get("workers", []):
            # "id" stays unique across the stack (uwsgitop keys on it); "worker" is the
            # number the pool's own log uses.
            workers.append(
                {**worker, "id": len(workers) + 1, "worker": worker["id"], "pool": part.name}
            )
        sockets += doc.get("sockets", [])
        pools.append(
            {
                "name": part.name,
                "kind": part.kind,
                "pid": doc.get("pid", part.pid),
                "generation": part.generation,
                "workers": len(doc.get("workers", []))
                or doc.get("php_fpm", {}).get("total processes", 0),
                "restarts": part.restarts,
                "up": bool(doc),
                "last_exit": part.last_exit,
                **({"reload_error": part.reload_error} if part.reload_error else {}),
                **({"php_fpm": doc["php_fpm"]} if "php_fpm" in doc else {}),
            }
        )
    return {
        "version": f"gantry-{__version__}",
        "listen_queue": 0,
        "listen_queue_errors": 0,
        "signal_queue": 0,
        "load": 0,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "started": int(started),
        "locks": [],
        "sockets": sockets,
        "pools": pools,
        "workers": workers,
        **({"caches": caches} if caches else {}),
    }


class StackStats:
    """Answers the stack's stats and metrics sockets from the supervisor's loop.

    ``serving()`` gives the serving generation of each part and the address of its stats
    socket; the documents are fetched concurrently, without blocking the loop."""

    def __init__(
        self, loop: ProcessLoop, started: float, serving: Callable[[], list[tuple[Part, str]]]
    ) -> None:
        self.loop = loop
        self.started = started
        self.serving = serving

    def gather(self, then: Callable[[dict[str, Any]], None]) -> None:
        """Fetch every part's document, then call ``then`` with the merged one."""
        parts = self.serving()
        docs: list[dict[str, Any] | None] = [None] * len(parts)
        if not parts:
            then(stack_document([], self.started))
            return

        def one_done(index: int, doc: dict[str, Any]) -> None:
            docs[index] = doc
            if all(d is not None for d in docs):
                merged = [(part, d or {}) for (part, _), d in zip(parts, docs, strict=True)]
                then(stack_document(merged, self.started))

        def receiver(index: int) -> Callable[[dict[str, Any]], None]:
            return lambda doc: one_done(index, doc)

        def php_receiver(index: int, part: Part) -> Callable[[dict[str, Any]], None]:
            # php-fpm's status page, read over FastCGI when a child is free to answer;
            # up while its master runs either way
            def done(status: dict[str, Any]) -> None:
                doc: dict[str, Any] = {"pid": part.pid} if part.pid is not None else {}
                if doc and status:
                    doc["php_fpm"] = status
                one_done(index, doc)

            return done

        for index, (part, address) in enumerate(parts):
            if part.kind == "php":
                if part.pid is None:
                    one_done(index, {})
                    continue
                DocumentFetch(self.loop, address, PART_TIMEOUT, php_receiver(index, part),
                              request=status_request(), parse=parse_status)  # fmt: skip
                continue
            DocumentFetch(self.loop, address, PART_TIMEOUT, receiver(index))

    def respond_stats(self, request: bytes, deliver: Deliver) -> None:
        """uWSGI's stats protocol: the merged document, then the close."""
        self.gather(lambda doc: deliver(json.dumps(doc).encode()))

    def respond_metrics(self, request: bytes, deliver: Deliver) -> None:
        """Prometheus text of every worker of the stack, labelled with its pool."""

        def render(doc: dict[str, Any]) -> bytes:
            rows = [
                ({"pool": w["pool"], "worker": str(w["id"]), "pid": str(w["pid"])}, w)
                for w in doc["workers"]
            ]
            return render_metric_rows(rows, self.started, doc.get("caches"))

        if not request.startswith((b"GET ", b"HEAD ")):
            deliver(http_text_answer(request, lambda: b""))
            return
        self.gather(lambda doc: deliver(http_text_answer(request, lambda: render(doc))))
