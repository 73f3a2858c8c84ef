"""calsync: calendar sync and scheduling integration worker for field-service dispatch."""

__version__ = "0.1.0"
