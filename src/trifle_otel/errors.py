"""Errors raised for user mistakes.  Each message names the thing and how to fix it."""


class TrifleError(Exception):
    """Base class: the CLI prints these as one clear line, never a traceback."""


class ConfigError(TrifleError):
    """A bad configuration value, file or store URL."""


class StoreError(TrifleError):
    """A store could not be opened, read or written."""


class NotFoundError(TrifleError):
    """A reference or key that is not in the store."""


class PartialWriteError(StoreError):
    """A bulk write where some operations were applied and ``failed`` were not."""

    def __init__(self, message: str, failed: list) -> None:
        super().__init__(message)
        self.failed = failed


class OTLPDecodeError(TrifleError):
    """An OTLP request body that cannot be read (answered 400 / INVALID_ARGUMENT)."""


class OTLPTooLarge(TrifleError):
    """An OTLP request body over the size limit, as received or inflated (answered 413 /
    RESOURCE_EXHAUSTED)."""


class WALFull(TrifleError):
    """The write-ahead log reached its byte bound: refuse new requests (503 / UNAVAILABLE)
    until stored executions let it trim."""
