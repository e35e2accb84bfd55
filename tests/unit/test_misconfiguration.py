"""Misconfiguration is caught at start-up or reported as not ready, never paid for by events."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from tests.unit.fakeapi import BASE, TOKEN
from worker.errors import ConfigurationError, SettingsError
from worker.rapidly import RapidlyClient
from worker.settings import load_settings


@pytest.mark.parametrize("token", [" tok_1 ", "tok_1\n", "\ttok_1"])
def test_token_is_stripped(token: str) -> None:
    assert load_settings(rapidly_api_token=token).rapidly_api_token.get_secret_value() == "tok_1"


def test_token_with_inner_whitespace_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(rapidly_api_token="tok secret_part")
    assert "RAPIDLY_API_TOKEN" in str(caught.value)
    assert "secret_part" not in str(caught.value)


@pytest.mark.parametrize("url", ["http://api.rapidly.tech", "http://10.0.0.5:8000"])
def test_http_to_a_remote_host_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match="RAPIDLY_API_URL"):
        load_settings(rapidly_api_token="t", rapidly_api_url=url)
    assert (
        load_settings(
            rapidly_api_token="t", rapidly_api_url=url, allow_insecure_api_url=True
        ).rapidly_api_url
        == url
    )


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:8", "https://x.example"]
)
def test_https_and_loopback_http_are_accepted(url: str) -> None:
    assert load_settings(rapidly_api_token="t", rapidly_api_url=url).rapidly_api_url == url


def test_redis_namespace_does_not_follow_the_token() -> None:
    a = load_settings(rapidly_api_token="old_token")
    b = load_settings(rapidly_api_token="rotated_token")
    assert a.redis_namespace == b.redis_namespace == "default"
    with pytest.raises(SettingsError, match="REDIS_NAMESPACE"):
        load_settings(rapidly_api_token="t", redis_namespace="a b")


def test_list_endpoint_404_is_a_configuration_error_naming_the_url() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(404, json={"detail": "x"}))
    client = RapidlyClient(BASE + "/wrong", SecretStr(TOKEN), transport=transport)
    with pytest.raises(ConfigurationError, match="RAPIDLY_API_URL"):
        client.check_token()


def test_rotating_the_token_keeps_the_redis_keys(tmp_path: object) -> None:
    from worker.runtime import Runtime

    prefixes = []
    for token in ("old_token", "rotated_token"):
        settings = load_settings(
            rapidly_api_token=token,
            redis_url="redis://127.0.0.1:6379/12",
            health_dir=str(tmp_path),
        )
        rt = Runtime.build(settings)
        prefixes.append((rt.dedupe._prefix, rt.store._prefix))  # type: ignore[attr-defined]
        rt.close()
    assert prefixes[0] == prefixes[1] == ("rapidly:default:done:", "rapidly:default:evt:")
