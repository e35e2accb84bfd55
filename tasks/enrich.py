"""``events.enrich``: the thin adapter. Error mapping lives in ``worker.tasking.EnrichTask``."""

from __future__ import annotations

from worker import runtime
from worker.app import app
from worker.service import Outcome
from worker.tasking import TASK_NAME, EnrichTask


@app.task(name=TASK_NAME, base=EnrichTask, bind=True)
def enrich(self: EnrichTask, event_id: str) -> Outcome:
    return runtime.current().service.process(event_id)
