"""Settings: FLAMIGO_* keys, environment, keyword overrides, clear errors."""

import pytest

from flamigo_actors.core.settings import Settings


def test_defaults() -> None:
    settings = Settings.from_config({}, {}, environ={})
    assert settings.ws_path == "/ws"
    assert (settings.ping_interval, settings.pong_timeout) == (54.0, 60.0)
    assert settings.max_message_size == 65536
    assert (settings.outbound_max_messages, settings.outbound_max_bytes) == (1000, 4 * 1024 * 1024)
    assert settings.rate_limit is None and settings.redis_url is None
    assert settings.inspect_enabled is False


def test_precedence_config_then_environment_then_keywords() -> None:
    config = {"FLAMIGO_WS_PATH": "/socket", "FLAMIGO_MAX_MESSAGE_SIZE": 100}
    environ = {"FLAMIGO_MAX_MESSAGE_SIZE": "200", "FLAMIGO_ALLOWED_ORIGINS": "https://a.example, https://b.example"}
    settings = Settings.from_config(config, {"ping_interval": 5, "pong_timeout": 6}, environ=environ)
    assert settings.ws_path == "/socket"
    assert settings.max_message_size == 200
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.ping_interval == 5.0
    overridden = Settings.from_config(config, {"max_message_size": 300}, environ=environ)
    assert overridden.max_message_size == 300


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"FLAMIGO_MAX_MESAGE_SIZE": 1}, "unknown setting FLAMIGO_MAX_MESAGE_SIZE"),
        ({"FLAMIGO_MAX_MESSAGE_SIZE": "big"}, "FLAMIGO_MAX_MESSAGE_SIZE must be an integer"),
        ({"FLAMIGO_MAX_MESSAGE_SIZE": 0}, "must be positive"),
        ({"FLAMIGO_DEBUG": "maybe"}, "FLAMIGO_DEBUG must be true or false"),
        ({"FLAMIGO_PING_INTERVAL": 60, "FLAMIGO_PONG_TIMEOUT": 30}, "must exceed"),
        ({"FLAMIGO_WS_PATH": "ws"}, "must start with '/'"),
        ({"FLAMIGO_RATE_LIMIT": -1}, "must be positive or None"),
        ({"FLAMIGO_REDIS_BACKPLANE": "pubsub"}, "FLAMIGO_REDIS_BACKPLANE must be 'stream' or 'interest'"),
    ],
)
def test_bad_values_name_the_key(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_config(config, {}, environ={})


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown Flamigo option 'pingg'"):
        Settings.from_config({}, {"pingg": 1}, environ={})
