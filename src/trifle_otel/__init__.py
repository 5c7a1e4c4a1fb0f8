"""trifle-otel: Trifle-style execution traces and stats from ordinary OpenTelemetry spans."""

from .annotate import fail, ignore, success, tag, trace, warn
from .config import Config, load_config
from .errors import ConfigError, NotFoundError, StoreError, TrifleError

__all__ = [
    "Config",
    "ConfigError",
    "NotFoundError",
    "StoreError",
    "TrifleError",
    "TrifleSpanExporter",
    "TrifleSpanProcessor",
    "fail",
    "ignore",
    "load_config",
    "success",
    "tag",
    "trace",
    "warn",
]

__version__ = "0.1.0"


def __getattr__(name: str):
    # The SDK-bound classes load on first use, so `import trifle_otel` stays light.
    if name == "TrifleSpanProcessor":
        from .ingest.processor import TrifleSpanProcessor

        return TrifleSpanProcessor
    if name == "TrifleSpanExporter":
        from .ingest.exporter import TrifleSpanExporter

        return TrifleSpanExporter
    raise AttributeError(name)
