"""A real php-fpm for tests: a pool of its own on a unix socket in a temp folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.process import Launcher, require_program


def pool_config(folder: Path, socket: Path, children: int = 2) -> Path:
    """Write a php-fpm config with one static pool listening on ``socket``."""
    conf = folder / "php-fpm.conf"
    root = os.getuid() == 0
    owner = "user = nobody\ngroup = nogroup\n" if root else ""
    conf.write_text(
        f"""[global]
error_log = {folder / "php-fpm.log"}
daemonize = no
pid = {folder / "php-fpm.pid"}

[test]
{owner}listen = {socket}
listen.mode = 0666
pm = static
pm.max_children = {children}
catch_workers_output = yes
php_admin_value[post_max_size] = 64M
php_admin_value[upload_max_filesize] = 64M
php_admin_value[memory_limit] = 256M
php_admin_value[output_buffering] = 0
php_admin_flag[log_errors] = on
php_admin_value[display_errors] = off
"""
    )
    return conf


def start_php_fpm(
    launch: Launcher, folder: Path, socket: Path, name: str = "php-fpm", children: int = 2
) -> subprocess.Popen[bytes]:
    """A started php-fpm (-F, its own config and prefix), stopped by the launcher."""
    binary = require_program("php-fpm8.2", "php8.2-fpm")
    conf = pool_config(folder, socket, children)
    # -n: no php.ini of the system (its settings would differ between machines)
    return launch.program(
        [binary, "-F", "-n", "-y", str(conf), "-p", str(folder)], str(socket), name, cwd=folder
    )
