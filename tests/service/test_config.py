"""Configuration: every option from a flag or an environment variable; models found by folder or NAME=DIR."""
import pytest

from service.artifact import ArtifactError
from service.cli import config_from_args
from service.config import (OPTIONS, Config, engine_threads, from_env, int8_setting, lm_threads, resolve_models,
                            stream_interval, workers)


def test_every_option_reads_its_environment_variable():
    env = {"RNNSERVE_PORT": "9001", "RNNSERVE_INT8": "true", "RNNSERVE_SESSION_TTL": "2.5",
           "RNNSERVE_API_KEY": "k", "RNNSERVE_MAX_BATCH": ""}
    c = from_env(env)
    assert (c.port, c.int8, c.session_ttl, c.api_key, c.max_batch) == (9001, "true", 2.5, "k", Config().max_batch)
    assert int8_setting(c) is True
    assert all(var.startswith("RNNSERVE_") for var, _ in OPTIONS.values())
    assert len({var for var, _ in OPTIONS.values()}) == len(OPTIONS)


def test_flags_override_the_environment(monkeypatch):
    import argparse
    from service.cli import add_serve_parser
    ap = argparse.ArgumentParser()
    add_serve_parser(ap.add_subparsers())
    monkeypatch.setenv("RNNSERVE_PORT", "9001")
    monkeypatch.setenv("RNNSERVE_MAX_QUEUE", "7")
    c = config_from_args(ap.parse_args(["serve", "--port", "9002", "--model", "a=/x"]))
    assert c.port == 9002 and c.max_queue == 7 and c.model_list == ["a=/x"]


def test_int8_is_auto_unless_chosen(monkeypatch):
    """RNNSERVE_INT8 / --int8: 0, 1 or auto (the default); `--int8` alone is 1, as when it was a switch; anything
    else stops the server with the variable named."""
    import argparse
    from service.cli import add_serve_parser
    ap = argparse.ArgumentParser()
    add_serve_parser(ap.add_subparsers())
    monkeypatch.delenv("RNNSERVE_INT8", raising=False)
    assert int8_setting(config_from_args(ap.parse_args(["serve"]))) is None
    assert int8_setting(config_from_args(ap.parse_args(["serve", "--int8"]))) is True
    assert int8_setting(config_from_args(ap.parse_args(["serve", "--int8", "0"]))) is False
    monkeypatch.setenv("RNNSERVE_INT8", "sometimes")
    with pytest.raises(SystemExit, match="RNNSERVE_INT8='sometimes': 0, 1 or auto"):
        config_from_args(ap.parse_args(["serve"]))


def test_stream_interval_is_auto_or_milliseconds(monkeypatch):
    assert stream_interval(Config()) is None
    assert stream_interval(Config(stream_interval="0")) == 0.0
    assert stream_interval(Config(stream_interval="12.5")) == 0.0125
    for bad in ("soon", "-1", "5000"):
        with pytest.raises(ValueError, match=f"RNNSERVE_STREAM_INTERVAL='{bad}': auto, or milliseconds from 0 to 1000"):
            stream_interval(Config(stream_interval=bad))


def test_models_by_folder_and_by_name(artifacts):
    found = resolve_models(Config(models=str(artifacts)))
    assert set(found) == {"tinylm", "tinyclf", "wide"}
    assert resolve_models(Config(models=str(artifacts / "tinylm"))) == {"tinylm": artifacts / "tinylm"}
    assert resolve_models(Config(model_list=[f"x={artifacts / 'tinylm'}"])) == {"x": artifacts / "tinylm"}
    with pytest.raises(ArtifactError, match="expected NAME=ARTIFACT_DIR"):
        resolve_models(Config(model_list=["nonsense"]))
    with pytest.raises(ArtifactError, match="models folder not found"):
        resolve_models(Config(models="/no/such/folder"))


def test_workers_and_threads_share_the_cores(monkeypatch):
    monkeypatch.setattr("service.config.cores", lambda: 16)
    assert workers(Config()) == 8 and engine_threads(Config()) == 2 and lm_threads(Config()) == 1
    assert workers(Config(sessions="memory")) == 1  # memory sessions live in one process
    one = Config(workers=1)
    assert engine_threads(one) == 4 and lm_threads(one) == 4 and engine_threads(Config(engine_threads=2)) == 2
    monkeypatch.setattr("service.config.cores", lambda: 2)
    assert workers(Config()) == 1 and engine_threads(Config()) == 2 and lm_threads(Config()) == 1
    monkeypatch.setattr("service.config.cores", lambda: 1)
    assert workers(Config()) == 1 and engine_threads(Config()) == 1 and lm_threads(Config()) == 1


def test_cores_count_the_container_quota(monkeypatch, tmp_path):
    from service import config
    real = config.Path

    def fake(path):
        return tmp_path / "cpu.max" if str(path) == "/sys/fs/cgroup/cpu.max" else real(path)
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a pod limited to 1.5 CPUs
    monkeypatch.setattr(config, "Path", fake)
    assert config.cores() == min(2, len(__import__("os").sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert config.cores() == len(__import__("os").sched_getaffinity(0))


def test_every_option_is_documented_in_the_api_reference():
    from tests.conftest import ROOT
    api = (ROOT / "docs" / "api.md").read_text()
    assert [var for var, _ in OPTIONS.values() if f"`{var}`" not in api] == []
    assert "docs/api.md" in (ROOT / "README.md").read_text()
