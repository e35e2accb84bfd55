"""RABBITMQ_QUEUE_TYPE and failover broker URLs: what the worker declares, what it accepts."""

from __future__ import annotations

import pytest

from worker.errors import SettingsError
from worker.publishing import topology
from worker.publishing._topology import EVENTS_QUEUE
from worker.settings import load_settings


def test_classic_is_the_contracts_declaration() -> None:
    queues = topology()
    assert queues.events_queue is EVENTS_QUEUE
    for queue in (queues.events_queue, queues.dead_letter_queue, queues.customer_created_queue):
        assert not queue.queue_arguments
        assert queue.durable


def test_quorum_adds_only_the_queue_type() -> None:
    classic, quorum = topology("classic"), topology("quorum")
    pairs = [
        (classic.events_queue, quorum.events_queue),
        (classic.dead_letter_queue, quorum.dead_letter_queue),
        (classic.customer_created_queue, quorum.customer_created_queue),
    ]
    for old, new in pairs:
        assert new.queue_arguments == {"x-queue-type": "quorum"}
        assert (new.name, new.exchange, new.routing_key) == (
            old.name,
            old.exchange,
            old.routing_key,
        )
        assert new.durable and not new.auto_delete and not new.exclusive
    assert quorum.input_broker_entities == (quorum.events_queue, quorum.dead_letter_queue)
    assert quorum.downstream_broker_entities[1] is quorum.customer_created_queue


def test_queue_type_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(require_token=False).rabbitmq_queue_type == "classic"
    monkeypatch.setenv("RABBITMQ_QUEUE_TYPE", "Quorum")
    assert load_settings(require_token=False).rabbitmq_queue_type == "quorum"
    monkeypatch.setenv("RABBITMQ_QUEUE_TYPE", "stream")
    with pytest.raises(SettingsError, match="RABBITMQ_QUEUE_TYPE"):
        load_settings(require_token=False)


def test_failover_broker_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = "amqp://u:p@127.0.0.1:5701//;amqp://u:p@127.0.0.1:5702//"
    monkeypatch.setenv("BROKER_URL", urls)
    assert load_settings(require_token=False).broker_url == urls
    monkeypatch.setenv("BROKER_URL", "amqp://u:p@127.0.0.1:5701//;http://nope")
    with pytest.raises(SettingsError, match="BROKER_URL") as caught:
        load_settings(require_token=False)
    assert "u:p" not in str(caught.value)
