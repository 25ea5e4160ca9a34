"""Running workers as an unprivileged user: nginx's ``user``, uWSGI's ``uid``/``gid``.

The master starts as root, binds its sockets (a port below 1024 needs it) and opens its
log files; each worker switches to the configured user and group right after the fork,
before it imports or runs any application code. The master keeps root: it must be able
to signal its workers and bind again on a reload.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass

from gantry.config import ConfigError

__all__ = ["ALLOW_ROOT", "Identity", "drop_privileges", "refuse_root", "resolve_identity"]

#: the environment variable that asks for workers running as root (as user = "root" does)
ALLOW_ROOT = "GANTRY_ALLOW_ROOT"

log = logging.getLogger("gantry.master")


@dataclass(frozen=True)
class Identity:
    """Who the workers run as."""

    user: str | None
    uid: int | None
    gid: int


def resolve_identity(user: str | None, group: str | None, where: str) -> Identity | None:
    """The identity ``user`` and ``group`` name (names or numbers), checked before anything
    starts; ``where`` names the table in errors ("serve", "front", "app 'api'"). None when
    the workers keep this process's identity (with a warning when that is root)."""
    refuse_root(user, where)
    if user is None and group is None:
        return None
    uid: int | None = None
    gid: int | None = None
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"{where}.user: no user {user!r} on this system") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"{where}.group: no group {group!r} on this system") from None
    assert gid is not None
    if os.geteuid() != 0 and (uid not in (None, os.geteuid()) or gid != os.getegid()):
        raise ConfigError(
            f"{where}.user: switching to user {user!r} group {group!r} needs the master to "
            f"start as root (it runs as uid {os.geteuid()})"
        )
    return Identity(user, uid, gid)


def refuse_root(user: str | None, where: str) -> None:
    """Workers that would run as root without being asked to: a ConfigError. Asking is
    ``user = "root"`` (``--user root``) or GANTRY_ALLOW_ROOT=1 in the environment; an
    application bug must not hand an attacker the machine."""
    if user is not None or os.geteuid() != 0:
        return
    asked = os.environ.get(ALLOW_ROOT)
    if asked == "demo":  # the built-in demo, which says so once itself
        return
    if asked == "1":
        log.warning("%s: the workers run as root (%s=1)", where, ALLOW_ROOT)
        return
    raise ConfigError(
        f"{where}.user: the workers would run as root; set user (and group) to an "
        f'unprivileged user, or user = "root" (--user root) or {ALLOW_ROOT}=1 to run them '
        "as root anyway"
    )


def drop_privileges(identity: Identity | None) -> None:
    """In a new worker: become ``identity`` for good (groups, then gid, then uid)."""
    if identity is None or os.geteuid() != 0:
        return
    if identity.uid is not None and identity.user is not None and not identity.user.isdigit():
        os.initgroups(identity.user, identity.gid)
    else:
        os.setgroups([identity.gid])
    os.setgid(identity.gid)
    if identity.uid is not None:
        os.setuid(identity.uid)
        if os.geteuid() == 0 and identity.uid != 0:  # must never come back
            raise RuntimeError("the worker is still root after setuid")
