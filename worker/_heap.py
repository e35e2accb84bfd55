"""The garbage collector, set for a long-running worker.

Everything imported and built while the worker starts (Celery, pydantic's validators, the
runtime) lives as long as the process. Left in the collector's generations it is rescanned by
every full collection: at the default settings, with the caches filled, full collections cost a
tenth of a second each and the collector about a tenth of the worker's CPU in profiles.
``gc.freeze()`` once the consumer is ready moves those objects out of the collector's sight, and a
larger young generation lets a task's short-lived objects die by reference count before a
collection visits them. Cycles are still collected: only what is frozen is never rescanned.
"""

from __future__ import annotations

import gc

# Container objects allocated (net) before a young collection; CPython's default is 700. A task
# allocates a few thousand, nearly all freed by reference count within the task.
YOUNG_GENERATION = 50_000


def settle() -> None:
    """Freeze what start-up built and widen the young generation; call once, when ready."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, middle, old)
