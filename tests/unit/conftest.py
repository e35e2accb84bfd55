from __future__ import annotations

import pytest
from pydantic import SecretStr

from tests.unit.fakeapi import BASE, TOKEN, FakeApi
from worker.rapidly import EventStore, RapidlyClient, RetryPolicy


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def client(api: FakeApi) -> RapidlyClient:
    c = RapidlyClient(BASE, SecretStr(TOKEN), transport=api.transport())
    yield c
    c.close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def store(client: RapidlyClient, sleeps: list[float]) -> EventStore:
    policy = RetryPolicy(
        max_attempts=4,
        budget_seconds=30,
        not_found_wait_seconds=3,
        parent_not_found_wait_seconds=1,
        sleep=sleeps.append,
    )
    return EventStore(client, policy=policy, max_events=1000)
