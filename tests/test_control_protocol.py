"""The control socket's pieces without sockets: the request line, the command registry,
how `gantry ctl purge` maps a URL to a zone's key, and the `control` keys of the schema."""

from __future__ import annotations

import json

import pytest

from gantry.config import ConfigError
from gantry.config.front import front_config_from_dict
from gantry.config.front_model import CacheZone
from gantry.config.stack import loads_stack
from gantry.control.protocol import (
    REQUEST_LIMIT,
    CommandError,
    CommandRegistry,
    decode_answer,
    encode_answer,
    encode_request,
    error_answer,
)
from gantry.front.control import key_of, purge


def registry() -> CommandRegistry:
    commands = CommandRegistry()
    commands.register("status", lambda arguments: {"seen": arguments})
    return commands


def test_a_request_line_names_its_command_and_carries_its_arguments() -> None:
    command, arguments = registry().parse(encode_request("status", verbose=True, zone=None))
    assert command.name == "status" and arguments == {"verbose": True}
    assert command.run(arguments) == {"seen": {"verbose": True}}
    assert registry().parse(b'{"command": "status"}\r\n')[1] == {}  # a CRLF line too


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"command": "status"}', "ending with a newline"),
        (b"{nope\n", "not JSON"),
        (b"\xff\xfe\n", "not JSON"),
        (b"[1, 2]\n", "expected a JSON object"),
        (b'{"cmd": "status"}\n', 'expected a "command" naming one of: status'),
        (b'{"command": "reboot"}\n', "no command 'reboot' (known: status)"),
        (b'{"command": "status"}\n{"command": "status"}\n', "one request a connection"),
        (b"x" * REQUEST_LIMIT, "request too large"),
        (b'{"command": "status", "x": "' + b"y" * REQUEST_LIMIT + b'"}\n', "request too large"),
    ],
)
def test_a_bad_request_is_a_command_error_saying_why(line: bytes, error: str) -> None:
    with pytest.raises(CommandError, match=error.replace("(", r"\(").replace(")", r"\)")):
        registry().parse(line)


def test_a_name_is_registered_once() -> None:
    commands = registry()
    with pytest.raises(ValueError, match="twice"):
        commands.register("status", lambda arguments: {})


def test_answers_are_one_json_line() -> None:
    assert encode_answer({"purged": 2}) == b'{"ok":true,"purged":2}\n'
    assert json.loads(error_answer("no")) == {"ok": False, "error": "no"}
    assert decode_answer(b'{"ok": false, "error": "x"}\n') == {"ok": False, "error": "x"}
    with pytest.raises(ValueError):
        decode_answer(b'{"purged": 1}\n')  # no "ok": not an answer


def test_a_url_is_mapped_through_the_zone_key() -> None:
    zone = CacheZone(name="pages", path="/unused")
    assert key_of(zone, "http://Example.TEST:8080/a/b?x=1#top") == "httpexample.test/a/b?x=1"
    # the scheme of the URL is the one the front saw (https: its TLS listeners)
    assert key_of(zone, "https://user@example.test") == "httpsexample.test/"
    assert key_of(zone, "httpexample.test/a") == "httpexample.test/a"  # a key as built
    by_path = CacheZone(name="api", path="/unused", key="$request_uri|$http_accept")
    assert key_of(by_path, "http://h/v1/x") == "/v1/x|"


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({}, "one of 'url', 'prefix' or 'tag'"),
        ({"url": "http://h/a", "tag": "t"}, "one of 'url', 'prefix' or 'tag'"),
        ({"url": ""}, "url: expected a non-empty string"),
        ({"tag": "t", "soft": "yes"}, "soft: expected true or false"),
        ({"tag": "t", "zone": "images"}, "no cache zone named 'images' \\(known: pages\\)"),
    ],
)
def test_purge_refuses_what_it_cannot_do(arguments: dict[str, object], error: str) -> None:
    zones = {"pages": CacheZone(name="pages", path="/nonexistent/never-made")}
    with pytest.raises(CommandError, match=error):
        purge(zones, arguments)


def test_purge_on_a_front_without_zones_says_so() -> None:
    with pytest.raises(CommandError, match="no cache zone"):
        purge({}, {"tag": "t"})


def test_control_must_be_an_absolute_socket_path() -> None:
    assert front_config_from_dict({"control": "/run/g/front.ctl"}).control == "/run/g/front.ctl"
    assert front_config_from_dict({"control": "unix:/run/g.ctl"}).control == "/run/g.ctl"
    assert front_config_from_dict({}).control is None
    for bad, why in (
        ("front.ctl", "absolute path"),
        ("/run/gantry/", "absolute path"),
        ("/" + "x" * 120, "at most 107 bytes"),
    ):
        with pytest.raises(ConfigError, match=f"f.toml: front.control: .*{why}"):
            front_config_from_dict({"control": bad}, "f.toml")


def test_stack_control_is_the_fronts_and_may_not_contradict_it() -> None:
    base = '[[app]]\nname = "web"\nmodule = "m:app"\n'
    plan = loads_stack(f'[stack]\ncontrol = "/run/s.ctl"\n{base}', "g.toml", "/tmp/rt")
    assert plan.front_config().control == "/run/s.ctl"
    listened = [address.path for address, _, _ in plan.part_listen("front", "front")]
    assert "/run/s.ctl" in listened  # bound by the supervisor, handed to each front
    same = '[stack]\ncontrol = "/run/s.ctl"\n[front]\ncontrol = "/run/s.ctl"\n'
    assert loads_stack(same + base, "g.toml", "/tmp/rt").control_path() == "/run/s.ctl"
    other = '[stack]\ncontrol = "/run/s.ctl"\n[front]\ncontrol = "/run/f.ctl"\n'
    with pytest.raises(ConfigError, match="g.toml: stack.control: .*give one of the two"):
        loads_stack(other + base, "g.toml", "/tmp/rt")
