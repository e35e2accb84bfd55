"""The worker's gevent pool (``worker._pool.TaskPool``) keeps its greenlets: each task runs on a
parked greenlet when there is one, never more than ``limit`` at once, and a revoke with
``terminate`` still ends the task it names. Run in a child interpreter, under gevent's patching."""

from __future__ import annotations

from tests.children import last_line, run_child

CHILD = """
from worker._gevent import patch
patch()
import weakref
import gevent
from gevent.event import Event
from worker._pool import TaskPool

pool = TaskPool(limit=3)
pool.start()
ran, results, running, most = [], [], [0], [0]
release = Event()

def task(i):
    running[0] += 1
    most[0] = max(most[0], running[0])
    ran.append((i, id(gevent.getcurrent())))
    release.wait()
    running[0] -= 1
    return i * 10

for i in range(3):
    job = pool.apply_async(task, args=(i,), callback=results.append)
    weakref.ref(job)  # Celery keeps a weak reference to what apply_async returns
    job.terminate(15)  # and may call this on it: a no-op, as on Celery's own pool greenlets

# A fourth task waits for a free slot: apply_async blocks its caller, as Pool.spawn did.
fourth = gevent.spawn(pool.apply_async, task, args=(3,), callback=results.append)
gevent.sleep(0.05)
assert len(ran) == 3 and not fourth.dead, (ran, fourth.dead)
release.set()
fourth.join(5)
gevent.sleep(0.05)
assert sorted(results) == [0, 10, 20, 30], results
assert most[0] == 3, most
first_greenlets = {g for _, g in ran[:3]}
assert ran[3][1] in first_greenlets, "the fourth task ran on a parked greenlet"

# Later tasks reuse the parked greenlets: no new one while one is parked.
before = {g for _, g in ran}
for i in range(4, 10):
    pool.apply_async(task, args=(i,), callback=results.append)
    gevent.sleep(0.01)
assert {g for _, g in ran[4:]} <= before, "a new greenlet although one was parked"

# A revoke with terminate names the task by the pid its accept callback was given.
release.clear()
pids = []
stuck = pool.apply_async(task, args=(99,), callback=results.append,
                         accept_callback=lambda pid, started: pids.append(pid))
gevent.sleep(0.05)
assert len(pids) == 1, pids
pool.terminate_job(pids[0])
gevent.sleep(0.05)
assert 990 not in results
release.set()
assert pool.apply_async(task, args=(7,), callback=results.append) is not None
gevent.sleep(0.05)
assert 70 in results, results
pool.stop()
print("ok")
"""


def test_tasks_run_on_parked_greenlets_within_the_limit_and_can_be_terminated() -> None:
    assert last_line(run_child(CHILD)) == "ok"
