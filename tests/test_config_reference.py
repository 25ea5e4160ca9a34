"""docs/configuration.md is what the schema renders, and it names every key of every table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gantry.config.file import LimitsSettings, ServeSettings
from gantry.config.front import (
    AutobanSettings,
    BlocklistSettings,
    CacheSettings,
    FrontSettings,
    HealthCheckSettings,
    LimitConnSettings,
    LimitConnZoneSettings,
    LimitReqSettings,
    LimitReqZoneSettings,
    LocationSettings,
    RealIpSettings,
    ServerSettings,
    SharedSettings,
    UpstreamServerSettings,
    UpstreamSettings,
)
from gantry.config.reference import render_reference, sections
from gantry.config.stack import AppSettings, StackTable

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
REGENERATE = "python -m gantry.config.reference > docs/configuration.md"

#: every table of gantry.toml, by its header in the reference
TABLES = {
    "[stack]": StackTable,
    "[front]": FrontSettings,
    "[[front.server]]": ServerSettings,
    "[[front.server.location]]": LocationSettings,
    "[[front.server.limit_req]]": LimitReqSettings,
    "[[front.server.limit_conn]]": LimitConnSettings,
    "[front.upstream.NAME]": UpstreamSettings,
    "[[front.upstream.NAME.servers]]": UpstreamServerSettings,
    "[front.upstream.NAME.health_check]": HealthCheckSettings,
    "[front.cache.NAME]": CacheSettings,
    "[front.limit_req_zone.NAME]": LimitReqZoneSettings,
    "[front.limit_conn_zone.NAME]": LimitConnZoneSettings,
    "[[front.autoban]]": AutobanSettings,
    "[front.shared]": SharedSettings,
    "[front.real_ip]": RealIpSettings,
    "[front.blocklist]": BlocklistSettings,
    "[[app]]": AppSettings,
    "[serve]": ServeSettings,
    "[serve.limits]": LimitsSettings,
}


def _section_texts(text: str) -> dict[str, str]:
    """The reference's text under each table heading, by header."""
    parts: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("#") and "`[" in line:
            current = line.split("`")[1]
            parts[current] = ""
        elif current is not None:
            parts[current] += line + "\n"
    return parts


def test_doc_is_what_the_generator_renders() -> None:
    assert DOC.read_text(encoding="utf-8") == render_reference(), (
        f"docs/configuration.md is stale: run `{REGENERATE}`"
    )


def test_module_prints_the_reference() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gantry.config.reference"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out == render_reference()


def test_every_table_has_a_section() -> None:
    rendered = {section.header: section.model for section in sections()}
    assert rendered == TABLES


def test_every_key_of_every_table_is_listed_in_its_section() -> None:
    texts = _section_texts(render_reference())
    assert set(texts) == set(TABLES)
    for header, model in TABLES.items():
        for key, field in model.model_fields.items():
            key = field.alias or key  # RealIpSettings.from_ is "from", return_ is "return"
            if model is AppSettings and key == "app":
                continue  # refused in [[app]]: `module` names the application
            assert f"`{key}`" in texts[header], f"{header}: key {key!r} missing"


def test_every_key_has_a_description() -> None:
    for header, model in TABLES.items():
        for key, field in model.model_fields.items():
            assert field.description, f"{header} {key}: add description= in the schema"


def test_types_and_defaults_are_rendered() -> None:
    text = render_reference()
    assert '| <a id="front.workers"></a>`workers` | integer (>= 1) | `1` |' in text
    assert '`protocol` | one of `"http"`, `"https"`, `"uwsgi"`, `"fastcgi"` | `"http"` |' in text
    assert "`path` | string | **required** |" in text
    assert '`listen` | array of strings | `["127.0.0.1:8080"]` |' in text
    assert "`runtime_dir` | string, optional | unset |" in text
