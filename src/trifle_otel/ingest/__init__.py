"""Ingest: the ways spans reach the pipeline (in-process processor, SDK exporter, OTLP)."""
