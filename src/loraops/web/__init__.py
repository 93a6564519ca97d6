"""The web dashboard, served by the API app at /ui."""

from loraops.web.app import dashboard_router
from loraops.web.auth import DashboardKeys
from loraops.web.source import AdapterView, DashboardSource, VersionView

__all__ = ["AdapterView", "DashboardKeys", "DashboardSource", "VersionView", "dashboard_router"]
