"""Thin Celery task adapters: take IDs, call one service function. Named by string in
``worker.app.TASK_MODULES`` (Celery's ``include``); nothing under ``worker/`` imports them."""
