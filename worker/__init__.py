"""The Rapidly event-enrichment worker.

Public surface: ``worker.app`` (the Celery app), ``worker.settings``, ``worker.cli``; the layout
is in docs/architecture.md. This module imports nothing so that the CLI can monkey-patch for
gevent before anything else loads.
"""
