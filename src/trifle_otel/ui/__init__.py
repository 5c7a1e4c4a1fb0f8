"""The web UI: executions, one execution's trace and waterfall, running and stuck jobs,
stats charts and dashboards, read from the stores (``create_app(config)``)."""

from .app import create_app

__all__ = ["create_app"]
