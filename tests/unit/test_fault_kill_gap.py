"""The fault suite's allowances: which duplicates ``faultkit.kill_gap`` and
``faultkit.confirm_lost`` explain, and which they do not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.faults.faultkit import confirm_lost, kill_gap

T0 = datetime(2026, 12, 2, 1, 0, 0, tzinfo=UTC)
EVENT = "0b6f4f3e-8d55-4d7e-9b1a-3c2f1e0d9a87"


def stamp(at: datetime) -> str:
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


class FakeLog:
    def __init__(self, *finished: datetime, mark_failed: datetime | None = None) -> None:
        self.records: list[dict[str, Any]] = [
            {"event": "enrich.finished", "event_id": EVENT, "timestamp": stamp(at)}
            for at in finished
        ]
        if mark_failed is not None:
            self.records.append(
                {
                    "event": "dedupe.mark_sent_failed",
                    "event_id": EVENT,
                    "timestamp": stamp(mark_failed),
                }
            )

    def log_records(self) -> list[dict[str, Any]]:
        return self.records


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def explained(
    built: list[float],
    kills: list[float],
    finished: tuple[float, ...] = (),
    extra: int = 1,
    mark_failed: float | None = None,
) -> bool:
    bodies = {EVENT: [{"enriched_at": stamp(at(s))} for s in built]}
    kill_times = [at(s) for s in kills]
    failed = None if mark_failed is None else at(mark_failed)
    worker: Any = FakeLog(*(at(s) for s in finished), mark_failed=failed)
    return kill_gap(worker, {EVENT: extra}, bodies, kill_times) == [EVENT]


def test_a_kill_just_after_the_first_record_explains_the_second() -> None:
    # built, killed 17 ms later before its sent mark, redelivered and built again after restart
    assert explained([0.0, 2.5], kills=[0.017], finished=(2.6,))


def test_a_kill_long_after_the_record_does_not() -> None:
    assert not explained([0.0, 2.5], kills=[0.8])


def test_a_delivery_that_finished_before_the_kill_does_not() -> None:
    # it logged its end, so its sent mark was written: a second record is a defect
    assert not explained([0.0, 2.5], kills=[0.017], finished=(0.010, 2.6))


def test_a_second_record_built_before_the_kill_does_not() -> None:
    assert not explained([0.0, 0.010], kills=[0.017])


def test_more_than_one_extra_record_does_not() -> None:
    assert not explained([0.0, 2.5, 3.0], kills=[0.017], extra=2)


def test_no_kill_explains_nothing() -> None:
    assert not explained([0.0, 2.5], kills=[])


def test_a_kill_while_redis_was_down_and_the_mark_unwritten_explains_it() -> None:
    # the sent mark failed (Redis down), the done mark was being retried when the kill came
    assert explained([0.0, 16.0], kills=[3.0], finished=(16.1,), mark_failed=0.001)


def test_a_mark_that_failed_after_the_kill_does_not() -> None:
    assert not explained([0.0, 16.0], kills=[3.0], mark_failed=5.0)


def lost_confirm_log(event: str, **fields: str) -> Any:
    log = FakeLog()
    log.records = [{"event": event, "event_id": EVENT, "timestamp": stamp(T0), **fields}]
    return log


def test_a_confirm_lost_with_the_connection_explains_it() -> None:
    detail = "publish not confirmed: ConnectionForced: (320) CONNECTION_FORCED - fault suite"
    ended = lost_confirm_log("enrich.finished", reason="NotPublished", detail=detail)
    cut_short = lost_confirm_log("worker.downstream_not_confirming", error=detail)
    assert confirm_lost(ended, [EVENT]) == confirm_lost(cut_short, [EVENT]) == [EVENT]


def test_a_nack_is_not_a_lost_confirm() -> None:
    # the broker refused the record: nothing was routed, so a second record is a defect
    nacked = lost_confirm_log(
        "enrich.finished", reason="NotPublished", detail="the broker refused (nacked) the message"
    )
    assert confirm_lost(nacked, [EVENT]) == []
