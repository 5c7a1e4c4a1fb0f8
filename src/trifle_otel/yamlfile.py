"""Reading the YAML files users write (config, rules), with errors that say where."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def parse_yaml(text: str, source: str, error: type[ConfigError] = ConfigError, hint: str = "") -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{source} is not valid YAML{at}: {getattr(exc, 'problem', exc)}{hint}") from None


def read_text(path: Path, what: str, error: type[ConfigError] = ConfigError, missing_hint: str = "") -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist{missing_hint}") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror}") from None
