"""Everything a front's limits and bans keep across its workers, made once by the
master before it forks (or by a lone worker): the zones, the bans, the autoban counts."""

from __future__ import annotations

from typing import Any

from gantry.config.front_model import FrontConfig
from gantry.front.blocklist import BAN_HIT, FILE_HIT
from gantry.front.limits.autoban import BANNED, Autoban, BanTable, LocalBanner
from gantry.front.limits.zones import DELAYED, REJECTED, LimitZones

__all__ = ["FrontLimits"]


class FrontLimits:
    """The shared state of ``config``'s limit zones, bans and autoban rules."""

    def __init__(self, config: FrontConfig) -> None:
        self.zones = LimitZones(config.limit_req_zones, config.limit_conn_zones)
        self.bans: BanTable | None = None
        self.banner: LocalBanner | None = None
        self.autoban: Autoban | None = None
        # the ban table also holds the blocklist's counters of refused requests
        if config.autoban or config.ban_file or config.shared or config.blocklist.files:
            self.bans = BanTable()
            self.banner = LocalBanner(self.bans, config.ban_file)
            self.banner.load()
            if config.autoban:
                self.autoban = Autoban(config.autoban, self.banner)

    @staticmethod
    def wanted(config: FrontConfig) -> bool:
        """Whether ``config`` has anything of the kind (else none is made)."""
        return bool(
            config.limit_req_zones or config.limit_conn_zones or config.autoban
            or config.ban_file or config.shared or config.blocklist.files
        )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Refusals per zone, bans per rule, blocked requests: for the stats JSON (read
        by the master from the shared tables, without the workers)."""
        doc: dict[str, Any] = {
            "limit_req": {
                name: {
                    "rejected": req.table.counter(REJECTED),
                    "delayed": req.table.counter(DELAYED),
                    "keys": req.table.used(),
                }
                for name, req in self.zones.req.items()
            },
            "limit_conn": {
                name: {"rejected": conn.table.counter(REJECTED), "keys": conn.table.used()}
                for name, conn in self.zones.conn.items()
            },
        }
        if self.bans is not None:
            table = self.bans.table
            banned = table.counter(BANNED) + table.counter(BAN_HIT)
            doc["bans"] = {"active": self.bans.active(), "blocked": banned}
            # refused requests by source: a ban (ctl, autoban, Redis), a blocklist file
            doc["blocked"] = {"ban": banned, "file": table.counter(FILE_HIT)}
        if self.autoban is not None:
            doc["autoban"] = [
                {"rule": n + 1, "when": rule.when, "bans": table.counter(0)}
                for n, (rule, table) in enumerate(
                    zip(self.autoban.rules, self.autoban.tables, strict=True)
                )
            ]
        return doc

    def metrics(self) -> str:
        """The same as Prometheus text."""
        doc = self.stats()
        lines: list[str] = []

        def family(name: str, help_text: str, kind: str = "counter") -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        family("gantry_limit_req_rejected_total", "Requests refused by a limit_req zone.")
        for zone, values in doc["limit_req"].items():
            lines.append(f'gantry_limit_req_rejected_total{{zone="{zone}"}} {values["rejected"]}')
        family("gantry_limit_req_delayed_total", "Requests delayed by a limit_req zone.")
        for zone, values in doc["limit_req"].items():
            lines.append(f'gantry_limit_req_delayed_total{{zone="{zone}"}} {values["delayed"]}')
        family("gantry_limit_conn_rejected_total", "Requests refused by a limit_conn zone.")
        for zone, values in doc["limit_conn"].items():
            lines.append(f'gantry_limit_conn_rejected_total{{zone="{zone}"}} {values["rejected"]}')
        if "autoban" in doc:
            family("gantry_autoban_bans_total", "Addresses banned by an autoban rule.")
            for rule in doc["autoban"]:
                lines.append(
                    f'gantry_autoban_bans_total{{rule="{rule["rule"]}",when="{rule["when"]}"}} '
                    f"{rule['bans']}"
                )
        if "blocked" in doc:
            family("gantry_blocked_total", "Requests refused by a ban or a blocklist file.")
            for source, count in doc["blocked"].items():
                lines.append(f'gantry_blocked_total{{source="{source}"}} {count}')
        if "bans" in doc:
            family("gantry_bans_active", "Addresses banned now (ctl, autoban, Redis).", "gauge")
            lines.append(f"gantry_bans_active {doc['bans']['active']}")
            family("gantry_bans_blocked_total", "Requests refused because of a ban.")
            lines.append(f"gantry_bans_blocked_total {doc['bans']['blocked']}")
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Unmap everything (a worker at its end; the master keeps its own mapping)."""
        self.zones.close()
        if self.bans is not None:
            self.bans.close()
        if self.autoban is not None:
            self.autoban.close()
