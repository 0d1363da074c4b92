"""Config: parsed once into frozen models; every problem reported with where and what."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from asyncingest import ConfigError, PipelineConfig, config_from_dict, load_config
from asyncingest.cli.main import main

MINIMAL = {
    "api": {"base_url": "http://127.0.0.1:1"},
    "endpoints": [{"name": "items", "path": "/items"}],
}


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, "p.yaml")
    return [str(p) for p in info.value.problems]


def test_minimal_config_gets_safe_defaults() -> None:
    cfg = config_from_dict(MINIMAL)
    assert cfg.output.compression == "zstd"
    assert cfg.api.http.verify_tls is True
    assert cfg.api.retry.max_attempts == 5
    assert 429 in cfg.api.retry.retry_statuses


def test_models_are_frozen() -> None:
    cfg = config_from_dict(MINIMAL)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.output.directory = "elsewhere"  # type: ignore[misc]


def test_every_problem_is_reported_with_its_location(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
api:
  base_url: notaurl
  rate_limits: [{requests: 0, per_seconds: 10}]
  retry: {max_attemps: 3}
endpoints:
  - name: laps
    path: /v1/laps
    pagination: {type: cursr}
  - name: x
    path: /x
    pagination: {type: cursor}
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = info.value.render()
    assert str(path) in text
    assert "api.base_url" in text
    assert "api.rate_limits[0].requests: Input should be greater than or equal to 1" in text
    assert "api.retry.max_attemps: unknown field" in text
    assert "endpoints[laps].pagination" in text and "'cursr'" in text
    assert "endpoints[x].pagination.cursor_path: required field is missing" in text
    assert len(info.value.problems) == 5


def test_unbound_template_variable_is_named() -> None:
    raw = {**MINIMAL, "endpoints": [{"name": "laps", "path": "/v1/{session}/laps"}]}
    (msg,) = problems(raw)
    assert "endpoints[laps]" in msg and "['session']" in msg


def test_for_each_must_name_a_defined_endpoint() -> None:
    raw = {
        **MINIMAL,
        "endpoints": [
            {"name": "a", "path": "/a/{k}", "for_each": {"endpoint": "nope", "bind": ["k"]}},
        ],
    }
    (msg,) = problems(raw)
    assert "'nope' is not defined" in msg


def test_dependency_cycle_is_refused() -> None:
    raw = {
        **MINIMAL,
        "endpoints": [
            {"name": "a", "path": "/a/{k}", "for_each": {"endpoint": "b", "bind": ["k"]}},
            {"name": "b", "path": "/b/{k}", "for_each": {"endpoint": "a", "bind": ["k"]}},
        ],
    }
    (msg,) = problems(raw)
    assert "cycle" in msg


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", "a\\b", "_x"])
def test_endpoint_names_cannot_escape_the_output_directory(name: str) -> None:
    raw = {**MINIMAL, "endpoints": [{"name": name, "path": "/x"}]}
    (msg,) = problems(raw)
    assert "endpoints" in msg and "name" in msg


def test_secret_headers_are_refused_in_the_file() -> None:
    raw = {
        "api": {"base_url": "http://x", "headers": {"Authorization": "Bearer abc123"}},
        "endpoints": [{"name": "a", "path": "/a"}],
    }
    (msg,) = problems(raw)
    assert "use 'auth'" in msg
    assert "abc123" not in msg


def test_dependency_order_puts_parents_first() -> None:
    cfg = config_from_dict(
        {
            **MINIMAL,
            "endpoints": [
                {
                    "name": "laps",
                    "path": "/l",
                    "params": {"s": "{s}"},
                    "for_each": {"endpoint": "sessions", "bind": ["s"]},
                },
                {"name": "meetings", "path": "/m"},
                {
                    "name": "sessions",
                    "path": "/s",
                    "params": {"m": "{m}"},
                    "for_each": {"endpoint": "meetings", "bind": ["m"]},
                },
            ],
        }
    )
    assert [e.name for e in cfg.order()] == ["meetings", "sessions", "laps"]


def test_json_config_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(MINIMAL), "p.json")
    cfg = load_config(
        path,
        [
            "output.directory=elsewhere",
            "api.concurrency.requests_per_endpoint=3",
            "endpoints.items.params.year=2024",
        ],
    )
    assert isinstance(cfg, PipelineConfig)
    assert cfg.output.directory == "elsewhere"
    assert cfg.api.concurrency.requests_per_endpoint == 3
    assert cfg.endpoints[0].params == {"year": 2024}


def test_override_of_unknown_endpoint_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(MINIMAL), "p.json")
    with pytest.raises(ConfigError, match="no entry named 'nope'"):
        load_config(path, ["endpoints.nope.path=/x"])


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "api: [\n  base_url: x\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(path)


def test_from_file_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    raw = {
        **MINIMAL,
        "endpoints": [
            {
                "name": "u",
                "path": "/u/{user_id}",
                "from_file": {"path": "ids.csv", "column": "user_id"},
            },
        ],
    }
    path = write(tmp_path, json.dumps(raw), "p.json")
    write(tmp_path, "user_id\n1\n", "ids.csv")
    cfg = load_config(path)
    assert cfg.endpoints[0].from_file is not None
    assert cfg.endpoints[0].from_file.path == str(tmp_path / "ids.csv")


def test_validate_cli_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "api: {base_url: http://x}\nendpoints: [{name: a}]\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "endpoints[a].path: required field is missing" in err
    assert "Traceback" not in err


def test_validate_cli_prints_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "config/demo.yaml"]) == 0
    out = capsys.readouterr().out
    for word in ("meetings", "sessions", "laps", "offset", "cursor", "Link header", "90/1s"):
        assert word in out
    assert out.index("meetings") < out.index("sessions") < out.index("laps")


def test_missing_file_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "does-not-exist.yaml"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_min_rows_per_file_defaults_to_half_of_max_and_may_not_exceed_it() -> None:
    assert config_from_dict(MINIMAL).output.min_rows == 500_000
    raw = {
        **MINIMAL,
        "output": {"max_rows_per_file": 1_000, "row_group_rows": 10, "min_rows_per_file": 10},
    }
    assert config_from_dict(raw).output.min_rows == 10
    raw = {
        **MINIMAL,
        "output": {"max_rows_per_file": 1_000, "row_group_rows": 10, "min_rows_per_file": 1_001},
    }
    assert any("min_rows_per_file cannot exceed" in p for p in problems(raw))
    raw = {**MINIMAL, "output": {"min_rows_per_file": 0}}
    assert any("min_rows_per_file" in p for p in problems(raw))


# -- input files and bounded reading ---------------------------------------------------------


def fan_out_config(tmp_path: Path, ids_path: str) -> Path:
    raw = {
        **MINIMAL,
        "endpoints": [
            {
                "name": "users",
                "path": "/u/{user_id}",
                "from_file": {"path": ids_path, "column": "user_id"},
            },
        ],
    }
    return write(tmp_path, json.dumps(raw), "p.json")


def test_validate_names_a_missing_input_file_with_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = fan_out_config(tmp_path, "ids.csv")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"endpoints[users].from_file.path: file not found: {tmp_path / 'ids.csv'}" in err


def test_validate_refuses_a_directory_as_input_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ids").mkdir()
    path = fan_out_config(tmp_path, "ids")
    assert main(["validate", str(path)]) == 2
    assert "endpoints[users].from_file.path: is a directory" in capsys.readouterr().err


def alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_by_its_expanded_size(tmp_path: Path) -> None:
    path = write(tmp_path, alias_bomb(8))  # 9**9 values once expanded
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "expands to more than 100,000 values" in info.value.render()
    assert str(path) in info.value.render()


def test_aliases_of_a_reasonable_size_still_work(tmp_path: Path) -> None:
    text = (
        "api: {base_url: 'http://127.0.0.1:1'}\n"
        "endpoints:\n"
        "  - {name: a, path: /a, params: &p {limit: 50}}\n"
        "  - {name: b, path: /b, params: *p}\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert [e.params["limit"] for e in cfg.endpoints] == [50, 50]


def test_a_recursive_anchor_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="recursive anchor"):
        load_config(write(tmp_path, "a: &a [*a]\n"))


def test_an_oversized_config_is_refused_before_parsing(tmp_path: Path) -> None:
    # Invalid YAML past the first line: had it been parsed, the error would be a YAML one.
    path = write(tmp_path, "api: {}\n" + "]" * (1024 * 1024))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "a config may be at most 1,048,576" in info.value.render()
    assert "invalid YAML" not in info.value.render()


def test_a_directory_as_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_validate_names_a_missing_column_and_a_file_in_another_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "id\n1\n", "ids.csv")
    path = fan_out_config(tmp_path, "ids.csv")
    assert main(["validate", str(path)]) == 2
    assert "endpoints[users].from_file.column: no column 'user_id'" in capsys.readouterr().err
    raw = json.loads(path.read_text())
    raw["endpoints"][0]["from_file"]["format"] = "parquet"
    path.write_text(json.dumps(raw))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "endpoints[users].from_file.path: cannot read it as parquet" in err
    assert "Traceback" not in err
