"""The shared path after ingest, as stages: intake → assembly → translation → stats →
writing → replay.  :class:`Pipeline` runs them on one background worker."""

from .counters import PipelineCounters
from .intake import START, Intake
from .worker import Pipeline

__all__ = ["START", "Intake", "Pipeline", "PipelineCounters"]
