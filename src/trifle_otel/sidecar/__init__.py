"""The OTLP sidecar (``trifle-otel serve``): OTLP receivers in front of the shared pipeline,
with a write-ahead log so that what is acknowledged survives a crash."""

from .server import Sidecar

__all__ = ["Sidecar"]
