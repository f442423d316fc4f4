"""Every environment variable the pipeline exports for a library is written as that library parses it, a value the
library would refuse is refused when params.yaml is loaded (key named), and one run's exports never leak into the
next run's settings in the same process (issue 21: MLflow 3.17 parses MLFLOW_HTTP_REQUEST_TIMEOUT as an int, and the
typed settings wrote "20.0", so every night against a tracking server failed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from pipeline.environ import QUIET_ENV, export_env, mlflow_env, quiet_env
from pipeline.settings import ConfigError, MlflowSettings, load_settings

REPO = Path(__file__).resolve().parents[2]


def _repo_mlflow() -> MlflowSettings:
    """``pipeline.mlflow`` exactly as the repository's params.yaml writes it (the documented default path)."""
    return load_settings(REPO).pipeline.mlflow


def _parse_with_library(name: str, value: str, monkeypatch):
    """The value as the library that reads ``name`` parses it (raises where the library would)."""
    monkeypatch.setenv(name, value)
    if name.startswith("MLFLOW_"):
        import mlflow.environment_variables as mev

        return getattr(mev, name).get()
    if name.startswith("PREFECT_"):
        from prefect.settings import Settings

        s = Settings()  # reads the environment now; a bad value raises pydantic's ValidationError
        return {"PREFECT_SERVER_ANALYTICS_ENABLED": lambda: s.server.analytics_enabled,
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS":
                    lambda: s.server.ephemeral.startup_timeout_seconds}[name]()
    if name.startswith("DVC_"):
        from dvc.utils import env2bool

        return env2bool(name)
    if name.startswith("HF_HUB_"):
        from huggingface_hub.constants import _is_true

        return _is_true(os.environ[name])
    if name == "TQDM_DISABLE":
        import subprocess
        import sys

        # tqdm reads TQDM_* when it is imported (its envwrap decorates tqdm.__init__): ask a fresh process
        out = subprocess.run([sys.executable, "-c", "from tqdm import tqdm; print(tqdm(range(1)).disable)"],
                             env={**os.environ, name: value}, capture_output=True, text=True, check=True)
        return out.stdout.strip() == "True"
    assert name in {"TOKENIZERS_PARALLELISM", "DO_NOT_TRACK", "GIT_PYTHON_REFRESH"}, f"no parser known for {name}"
    return value


def test_every_exported_variable_parses_with_its_library(monkeypatch):
    exported = {**QUIET_ENV, **mlflow_env(_repo_mlflow())}
    for name, value in exported.items():
        assert isinstance(value, str)
        _parse_with_library(name, value, monkeypatch)
    cfg = _repo_mlflow()
    assert _parse_with_library("MLFLOW_HTTP_REQUEST_TIMEOUT", exported["MLFLOW_HTTP_REQUEST_TIMEOUT"],
                               monkeypatch) == cfg.http_timeout_s == 20
    assert _parse_with_library("MLFLOW_HTTP_REQUEST_MAX_RETRIES", exported["MLFLOW_HTTP_REQUEST_MAX_RETRIES"],
                               monkeypatch) == cfg.http_retries
    assert _parse_with_library("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120", monkeypatch) == 120
    assert _parse_with_library("TQDM_DISABLE", "1", monkeypatch) is True


def test_the_old_float_export_is_what_mlflow_refuses(monkeypatch):
    """The check above can fail: the value the typed settings used to write is refused by MLflow's parser."""
    with pytest.raises(ValueError, match="MLFLOW_HTTP_REQUEST_TIMEOUT"):
        _parse_with_library("MLFLOW_HTTP_REQUEST_TIMEOUT", str(20.0), monkeypatch)


def test_mlflow_limits_match_mlflow_own_bounds():
    """MLflow refuses retries and backoff above its internal limits; the settings' bounds are those limits."""
    import mlflow.environment_variables as mev

    fields = MlflowSettings.model_fields
    bound = {m.__class__.__name__: m for m in fields["http_retries"].metadata}
    assert bound["Le"].le == mev._MLFLOW_HTTP_REQUEST_MAX_RETRIES_LIMIT.get()
    bound = {m.__class__.__name__: m for m in fields["http_backoff_factor"].metadata}
    assert bound["Le"].le == mev._MLFLOW_HTTP_REQUEST_MAX_BACKOFF_FACTOR_LIMIT.get()


@pytest.mark.parametrize("key, value, problem", [
    ("http_timeout_s", 20.5, "integer"),
    ("http_retries", 11, "less than or equal to 10"),
    ("http_backoff_factor", 500, "less than or equal to 120"),
    ("http_timeout_s", 0, "greater than 0"),
])
def test_a_value_mlflow_would_refuse_is_refused_at_load_with_the_key_named(tmp_path, key, value, problem):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pipeline"]["mlflow"][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for f in ("adapters.yaml", "adapters-smollm2.yaml"):
        (tmp_path / f).write_text((REPO / f).read_text())
    with pytest.raises(ConfigError, match=rf"params.yaml: pipeline.mlflow.{key}: .*{problem}"):
        load_settings(tmp_path)


def test_a_whole_float_in_params_is_exported_as_an_int(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["pipeline"]["mlflow"]["http_timeout_s"] = 30.0  # YAML `30.0`: a whole number, kept as 30
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for f in ("adapters.yaml", "adapters-smollm2.yaml"):
        (tmp_path / f).write_text((REPO / f).read_text())
    assert mlflow_env(load_settings(tmp_path).pipeline.mlflow)["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"


def test_exports_follow_the_settings_but_never_override_the_user(monkeypatch):
    from pipeline import environ

    for k in mlflow_env(MlflowSettings()):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(environ, "_EXPORTED", {})
    export_env(mlflow_env(MlflowSettings(http_timeout_s=5)))
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    export_env(mlflow_env(MlflowSettings(http_timeout_s=7)))  # a later run's settings win over ours, no leak
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")  # the user's own value wins
    export_env(mlflow_env(MlflowSettings(http_timeout_s=9)))
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    monkeypatch.setenv("TQDM_DISABLE", "0")
    quiet_env()
    assert os.environ["TQDM_DISABLE"] == "0"
