"""Everything a front's limits and bans keep across its workers, made once by the
master before it forks (or by a lone worker): the zones, the bans, the autoban counts."""

from __future__ import annotations

from gantry.config.front_model import FrontConfig
from gantry.front.limits.autoban import Autoban, BanTable, LocalBanner
from gantry.front.limits.zones import LimitZones

__all__ = ["FrontLimits"]


class FrontLimits:
    """The shared state of ``config``'s limit zones, bans and autoban rules."""

    def __init__(self, config: FrontConfig) -> None:
        self.zones = LimitZones(config.limit_req_zones, config.limit_conn_zones)
        self.bans: BanTable | None = None
        self.banner: LocalBanner | None = None
        self.autoban: Autoban | None = None
        if config.autoban or config.ban_file:
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
            or config.ban_file
        )  # fmt: skip

    def close(self) -> None:
        """Unmap everything (a worker at its end; the master keeps its own mapping)."""
        self.zones.close()
        if self.bans is not None:
            self.bans.close()
        if self.autoban is not None:
            self.autoban.close()
