"""Gantry's configuration: one schema, one reader and writer, one error format.

The names most roles need are re-exported here; the tables live in submodules:
`serve` (the app server's settings), `file` (the TOML reader and the error format),
`ini` (uWSGI ini migration), `front` and `front_model` (the front server), `stack`
(`gantry up`) and `reference` (the generated reference).
"""

from gantry.config.serve import (
    DEFAULT_UWSGI_ALLOW,
    ConfigError,
    ListenAddress,
    ServeConfig,
    parse_address,
    parse_networks,
)

__all__ = [
    "DEFAULT_UWSGI_ALLOW",
    "ConfigError",
    "ListenAddress",
    "ServeConfig",
    "parse_address",
    "parse_networks",
]
