"""``rapidly-worker replay``: dead letters back to ``rapidly.events`` (CONTRACT.md section 8).

Only the messages in ``rapidly.events.dead`` when the replay starts are looked at, oldest first
(``basic_get``), so a replayed message that fails again during the run is not replayed twice.
A message that is moved is published to ``rapidly.events`` (its body, content type and task
headers unchanged, ``x-death-*`` and ``x-attempts`` removed, ``x-replays`` incremented) and acked
on the dead queue only once the broker confirmed the publish. A message that is not moved (another
reason, past ``--limit``, ``--dry-run``, or a publish that failed) is held unacknowledged until the
end and then put back where it was: RabbitMQ requeues a rejected message at its original position;
kombu's Redis transport would append it to the tail, so there it is pushed back onto the head,
newest first, which restores the original order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import structlog
from kombu import Connection

from worker.publishing import (
    PublishError,
    QueueType,
    TaskMessage,
    TaskPublisher,
    topology,
)

log = structlog.get_logger()

REPLAYS_HEADER = "x-replays"
# Headers that describe the dead-lettering, not the task: a replayed message carries none of them.
_DEAD_LETTER_HEADERS = ("x-attempts",)
_DEAD_LETTER_PREFIX = "x-death"


@dataclass
class ReplayResult:
    moved: Counter[str] = field(default_factory=Counter)  # reason -> messages (would be) moved
    kept: int = 0  # looked at and left in the dead queue
    failed: str | None = None  # why the run stopped early (a publish was not confirmed)
    dry_run: bool = False
    listed: list[str] = field(default_factory=list)  # dry run: one line per message, in order

    def summary(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        total = sum(self.moved.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.moved.items()))
        line = f"{verb} {total} dead letter(s)" + (f" ({reasons})" if reasons else "")
        line += f"; {self.kept} left in the dead queue"
        if self.failed:
            line += f"; stopped: {self.failed}"
        return line


def replayed_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """The task headers of a dead letter as they go back to ``rapidly.events``."""
    kept = {
        key: value
        for key, value in (headers or {}).items()
        if not key.startswith(_DEAD_LETTER_PREFIX) and key not in _DEAD_LETTER_HEADERS
    }
    kept[REPLAYS_HEADER] = replay_count(headers) + 1
    return kept


def replay_count(headers: dict[str, Any] | None) -> int:
    """How many times a message was replayed already (0 for one never replayed)."""
    try:
        return max(0, int((headers or {}).get(REPLAYS_HEADER) or 0))
    except (TypeError, ValueError):
        return 0


def death_reason(headers: dict[str, Any] | None) -> str:
    return str((headers or {}).get("x-death-reason") or "unknown")


def replay(
    broker_url: str,
    *,
    reasons: Collection[str] = (),
    limit: int | None = None,
    dry_run: bool = False,
    timeout: float = 10.0,
    queue_type: QueueType = "classic",
) -> ReplayResult:
    result = ReplayResult(dry_run=dry_run)
    publisher = (
        None if dry_run else TaskPublisher(broker_url, timeout=timeout, queues=topology(queue_type))
    )
    held: list[Any] = []
    with Connection(broker_url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=3)
        channel: Any = conn.channel()
        try:
            dead = topology(queue_type).dead_letter_queue.bind(channel)
            dead.exchange.declare()
            # Not passive: on Redis an empty queue does not exist and a passive declare fails.
            declared: Any = dead.queue_declare()
            dead.queue_bind()
            waiting = int(declared.message_count)
            for _ in range(waiting):
                if limit is not None and sum(result.moved.values()) >= limit:
                    break
                message = dead.get(no_ack=False)
                if message is None:
                    break
                reason = death_reason(message.headers)
                if reasons and reason not in reasons:
                    held.append(message)
                    continue
                if publisher is None:  # dry run: counted, then put back
                    held.append(message)
                    result.moved[reason] += 1
                    result.listed.append(_describe(message, reason))
                    continue
                try:
                    publisher.publish_task(
                        TaskMessage.from_consumed(message, replayed_headers(message.headers))
                    )
                except PublishError as exc:
                    held.append(message)
                    result.failed = f"rapidly.events did not confirm: {exc}"
                    log.error("replay.publish_failed", reason=reason, error=str(exc))
                    break
                message.ack()
                result.moved[reason] += 1
                log.info(
                    "replay.moved",
                    reason=reason,
                    task_id=str((message.headers or {}).get("id"))[:64],
                    replays=replay_count(message.headers) + 1,
                )
        finally:
            result.kept = len(held)
            _put_back(channel, held)
            channel.close()
            if publisher is not None:
                publisher.close()
    return result


def _describe(message: Any, reason: str) -> str:
    headers = message.headers or {}
    return (
        f"{reason}\ttask {str(headers.get('id'))[:64]}\t{str(headers.get('task'))[:64]}"
        f"\targs {str(headers.get('argsrepr'))[:100]}\treplays {replay_count(headers)}"
    )


def _put_back(channel: Any, held: list[Any]) -> None:
    """Return held messages to the dead queue in their original order (see the module doc)."""
    qos: Any = getattr(channel, "qos", None)
    redis_restore = getattr(qos, "restore_by_tag", None)
    for message in reversed(held):
        if redis_restore is not None:
            # kombu's Redis QoS: RPUSH back onto the head (reject would LPUSH onto the tail),
            # then forget the delivery as reject does.
            redis_restore(message.delivery_tag, leftmost=False)
            super(type(qos), qos).ack(message.delivery_tag)
        else:
            message.reject(requeue=True)
