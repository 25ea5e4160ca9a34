"""One generation of one process ``gantry up`` runs: the front or an application pool."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from gantry.config import ListenAddress
from gantry.process.loop import Backoff

__all__ = ["Part", "PartKey", "PartSockets"]

# A part that dies is restarted after 0.1 s, 0.2 s, ... up to this many seconds.
MAX_BACKOFF = 5.0

PartKey = tuple[str, str]  # (kind, name)
PartSockets = list[tuple[ListenAddress, socket.socket]]


@dataclass(eq=False)  # one generation is one object: lists of parts compare by identity
class Part:
    """One generation of one process the supervisor runs: the front, or an application pool."""

    name: str  # "front" or the pool's name
    kind: str  # "front" or "app"
    sockets: PartSockets
    state_path: str = ""
    generation: int = 1
    #: the runtime-dir stats socket its master binds, removed once it is gone (None: the
    #: pool's own `stats` setting, which is the user's)
    stats_file: str | None = None
    pid: int | None = None
    started: float = 0.0
    restarts: int = 0
    #: restart delays after it died
    backoff: Backoff = field(default_factory=lambda: Backoff(MAX_BACKOFF))
    last_exit: str = ""
    #: its master said READY=1 since it last started
    ready: bool = False
    #: stopped for its next generation, which must not run beside it: not restarted
    handing_over: bool = False
    #: a removed pool: told to stop once no old front generation may still route to it
    after_front: bool = False
    #: a new generation that died before it was ready: how
    failed: str = ""
    #: its master's last in-place reload failed (the old workers kept serving): why
    reload_error: str = ""
    #: the state file its master was started with (a master that re-executes itself on a
    #: reload reads it again): kept while the generation runs
    started_with: str = ""

    @property
    def key(self) -> PartKey:
        """(kind, name): the part across its generations."""
        return (self.kind, self.name)

    @property
    def label(self) -> str:
        """How the log names the part."""
        return "front" if self.kind == "front" else f"app {self.name!r}"
