"""``events.enrich_customer``: a webhook's work (enqueued by the ingress). Error mapping lives in
``worker.tasking.CustomerEventTask``."""

from __future__ import annotations

from worker import runtime
from worker.app import app
from worker.service import Outcome
from worker.tasking import CUSTOMER_TASK_NAME, CustomerEventTask


@app.task(name=CUSTOMER_TASK_NAME, base=CustomerEventTask, bind=True)
def enrich_customer(self: CustomerEventTask, event_name: str, customer_id: str) -> Outcome:
    return runtime.current().service.process_customer_event(event_name, customer_id)
