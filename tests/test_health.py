def test_health_reports_database_and_redis_ok(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_health_is_503_when_redis_is_unreachable(app, client):
    import redis

    original = app.extensions["redis"]
    app.extensions["redis"] = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        response = client.get("/health")
    finally:
        app.extensions["redis"] = original
    assert response.status_code == 503
    body = response.get_json()
    assert body["redis"] == "unavailable" and body["database"] == "ok" and body["status"] == "unavailable"


def test_request_id_is_echoed_or_generated(client):
    echoed = client.get("/health", headers={"X-Request-Id": "abc-123"})
    assert echoed.headers["X-Request-Id"] == "abc-123"
    generated = client.get("/health", headers={"X-Request-Id": "<script>bad</script>"})
    assert generated.headers["X-Request-Id"] != "<script>bad</script>"
    assert len(generated.headers["X-Request-Id"]) == 32


def test_config_accepts_heroku_postgres_scheme(monkeypatch, tmp_path):
    from app.config import database_url_from_env

    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db.example:5432/shop")
    assert database_url_from_env(str(tmp_path)) == "postgresql+psycopg://u:p@db.example:5432/shop"
    monkeypatch.delenv("DATABASE_URL")
    assert database_url_from_env(str(tmp_path)).startswith("sqlite:///")


def test_secret_key_is_required_outside_debug_and_tests(monkeypatch):
    import pytest

    from app import create_app
    from app.config import ConfigError

    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    with pytest.raises(ConfigError):
        create_app()


def test_engine_settings_defaults(monkeypatch):
    from app.config import Settings

    for name in ("GRACE_PERIOD_SECONDS", "FALLBACK_CAPTURE_AFTER_SECONDS", "FALLBACK_SWEEP_INTERVAL_SECONDS",
                 "RECONCILE_INTERVAL_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert (
        settings.grace_period_seconds,
        settings.fallback_capture_after_seconds,
        settings.fallback_sweep_interval_seconds,
        settings.reconcile_interval_seconds,
    ) == (3600, 3900, 300, 3600)
    monkeypatch.setenv("RECONCILE_INTERVAL_SECONDS", "900")
    assert Settings.from_env().reconcile_interval_seconds == 900
