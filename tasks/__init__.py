"""Thin Celery task adapters: take IDs, call one service function. Imported explicitly by
``worker.app.configure``."""
