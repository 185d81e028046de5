"""A web dashboard for every job on a backend, read only through the Queue/Store interfaces.

``cloudloop dashboard`` serves it (:class:`DashboardServer`); :mod:`.view`
decides what is read from the store and how often; ``static/`` holds the page
(plain HTML, CSS and JS, no build step, nothing fetched from elsewhere).
"""

from __future__ import annotations

from .server import DashboardServer, static_file
from .view import DashboardView, JobView

__all__ = ["DashboardServer", "DashboardView", "JobView", "static_file"]
