"""The command line as users run it: subprocesses against the bundled mock API."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from asyncingest.cli.main import main
from asyncingest.mockapi import MockAPI, MockSettings

from .conftest import F1_KEYS, ROOT, assert_same_records, cli, read_records, write_config


@pytest.mark.parametrize("command", ["run", "validate", "plan", "demo", "mock-api"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 2


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_run_with_json_logs_then_already_complete(tmp_path: Path) -> None:
    async with MockAPI(MockSettings.small()) as api:
        cfg = write_config(tmp_path, api.url)
        code, _, err = await cli("run", str(cfg), "--log-format", "json", "--log-level", "debug")
        assert code == 0, err
        lines = [orjson.loads(x) for x in err.splitlines() if x.startswith("{")]
        requests = [x for x in lines if x.get("event") == "request_finished"]
        assert requests and all(set(x) >= {"ts", "level", "url", "status"} for x in requests)
        for name, keys in F1_KEYS.items():
            assert_same_records(
                read_records(tmp_path / "out", name), getattr(api.dataset, name), keys
            )
        code, _, err = await cli("run", str(cfg), "--quiet")
        assert code == 0 and "already complete" in err


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_sync_mode_writes_the_same_records(tmp_path: Path) -> None:
    async with MockAPI(MockSettings.small(fault_rate=0.2)) as api:
        cfg = write_config(tmp_path, api.url)
        code, _, err = await cli("run", str(cfg), "--mode", "sync", "--workers", "8", "--quiet")
        assert code == 0, err
        for name, keys in F1_KEYS.items():
            assert_same_records(
                read_records(tmp_path / "out", name), getattr(api.dataset, name), keys
            )


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_plan_samples_parents_and_names_the_bottleneck(tmp_path: Path) -> None:
    async with MockAPI(MockSettings.small()) as api:
        cfg = write_config(tmp_path, api.url)
        code, out, err = await cli("plan", str(cfg), "--sample", "2")
        assert code == 0, err
        assert "sessions" in out and "laps" in out and "requests:" in out
        assert "50/1s" in out


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_plan_json_gives_the_run_s_request_count_when_every_walk_is_sampled(
    tmp_path: Path,
) -> None:
    """The small mock has 4 sessions: with --sample 5 every walk is sampled, so the estimate
    is exact (no faults, so no retries either) and its range closes on it."""
    async with MockAPI(MockSettings.small()) as api:
        cfg = write_config(tmp_path, api.url)
        code, out, err = await cli("plan", str(cfg), "--sample", "5", "--json")
        assert code == 0, err
        est = orjson.loads(out)
        api.reset()
        code, _, err = await cli("run", str(cfg), "--quiet")
        assert code == 0, err
        assert est["requests"] == est["requests_low"] == est["requests_high"]
        assert est["requests"] == api.stats.requests
        laps = next(e for e in est["endpoints"] if e["name"] == "laps")
        assert laps["walks"]["value"] == 4 and laps["pages_per_walk"]["value"] == 4
        assert laps["pages_from"] == "API totals (every walk)"


# -- every user mistake: exit 2, a message naming what is wrong, no traceback ---------------

GOOD = "api: {base_url: 'http://127.0.0.1:1'}\nendpoints: [{name: items, path: /items}]\n"


@pytest.fixture
def mistakes(tmp_path: Path) -> dict[str, str]:
    """Broken inputs by name: paths of files, a folder, a busy port."""
    files = {
        "good": GOOD,
        "invalid_yaml": "api: [\n  base_url: x\n",
        "wrong_type": "api: {base_url: 'http://127.0.0.1:1', concurrency: {endpoints: many}}\n"
        "endpoints: [{name: items, path: /items}]\n",
        "unknown_field": GOOD + "outptu: {directory: x}\n",
        "empty": "",
        "missing_input": "api: {base_url: 'http://127.0.0.1:1'}\n"
        "endpoints: [{name: users, path: '/u/{user_id}', "
        "from_file: {path: nowhere.csv, column: user_id}}]\n",
        "transform": GOOD.replace(
            "path: /items}",
            "path: /items, transform: {function: 'asyncingest.examples.telemetry:lap_stats'}}",
        ),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = str(tmp_path / f"{name}.yaml")
        Path(paths[name]).write_text(text)
    paths["binary"] = str(tmp_path / "binary.yaml")
    Path(paths["binary"]).write_bytes(b"\xff\xfe\x00api")
    paths["missing"] = str(tmp_path / "missing.yaml")
    paths["folder"] = str(tmp_path)
    paths["a_file"] = str(tmp_path / "good.yaml")
    return paths


# (argv with {placeholders} from the fixture, what the message must name)
MISTAKES = [
    (["{cmd}", "{missing}"], "missing.yaml: 1 problem"),
    (["{cmd}", "{folder}"], "is a directory"),
    (["{cmd}", "{binary}"], "binary.yaml"),
    (["{cmd}", "{invalid_yaml}"], "invalid_yaml.yaml"),
    (["{cmd}", "{wrong_type}"], "api.concurrency.endpoints"),
    (["{cmd}", "{unknown_field}"], "outptu: unknown field"),
    (["{cmd}", "{empty}"], "empty.yaml"),
    (["{cmd}", "{missing_input}"], "endpoints[users].from_file.path: file not found"),
    (["{cmd}", "{good}", "--set", "no-equals-sign"], "--set no-equals-sign"),
    (["{cmd}", "{good}", "--set", "endpoints.nope.path=/x"], "no entry named 'nope'"),
    (["{cmd}", "{good}", "--set", "api.retry.max_attempts=lots"], "api.retry.max_attempts"),
    (["{cmd}", "{good}", "--bogus-flag"], "--bogus-flag"),
]
RUN_MISTAKES = [
    (["run", "{good}", "--workers", "-1", "--mode", "sync"], "--workers"),
    (["run", "{good}", "--workers", "0", "--mode", "sync"], "--workers"),
    (["run", "{good}", "--workers", "4"], "--workers: only used with --mode sync"),
    (["run", "{good}", "--progress-every", "0"], "--progress-every"),
    (["run", "{good}", "--progress-every", "nan"], "--progress-every"),
    (["run", "{good}", "--stop-timeout", "-1"], "--stop-timeout"),
    (["run", "{good}", "--metrics-port", "70000"], "--metrics-port"),
    (["run", "{good}", "--metrics-port", "{busy_port}"], "cannot serve metrics"),
    (["run", "{good}", "--mode", "fast"], "--mode"),
    (["run", "{good}", "--log-level", "loud"], "--log-level"),
    (["run", "{good}", "--mode", "sync", "--retry-failed"], "--retry-failed: not available"),
    (["run", "{good}", "--mode", "sync", "--metrics-port", "0"], "--metrics-port: not available"),
    (["run", "{good}", "--mode", "sync", "--stop-timeout", "5"], "--stop-timeout: not available"),
    (["run", "{transform}", "--mode", "sync", "-o", "{folder}/o"], "endpoints[items].transform"),
    (["run", "{good}", "--output", "{a_file}/out"], "--output: "),
    (["run", "{good}", "--output="], "--output: is empty"),
    (["run", "{good}", "--fresh", "--retry-failed"], "--fresh: --fresh deletes the dead"),
    (["run", "{good}", "--set", "output.directory={a_file}"], "output.directory: "),
    (["plan", "{good}", "--sample", "-1"], "--sample"),
    (["plan", "{good}", "--sample", "some"], "--sample"),
    (["demo", "--output", "{a_file}/demo"], "--output: "),
    (["demo", "--progress-every", "-5"], "--progress-every"),
    (["demo", "--metrics-port", "99999"], "--metrics-port"),
    (["mock-api", "--port", "70000"], "--port"),
    (["mock-api", "--port", "{busy_port}"], "cannot listen"),
    (["mock-api", "--rate-limit", "lots"], "--rate-limit"),
    (["mock-api", "--fault-rate", "2"], "--fault-rate"),
    (["mock-api", "--latency-ms", "-1"], "--latency-ms"),
    (["mock-api", "--seed", "x"], "--seed"),
    (["mock-api", "--preset", "huge"], "--preset"),
    (["nope"], "invalid choice"),
]
CASES = [
    ([a.replace("{cmd}", cmd) for a in argv], named)
    for cmd in ("run", "validate", "plan")
    for argv, named in MISTAKES
] + RUN_MISTAKES


@pytest.mark.parametrize(
    ("argv", "named"), CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_every_user_mistake_exits_2_naming_it_without_a_traceback(
    argv: list[str],
    named: str,
    mistakes: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {**mistakes, "busy_port": str(busy.getsockname()[1])}
        args = [a.format(**values) for a in argv]
        try:
            code = main(args)  # anything but SystemExit escaping here is a traceback
        except SystemExit as exc:
            code = exc.code  # argparse's usage errors
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in out + err
    assert named.format(**mistakes) in err


@pytest.mark.slow  # runs the CLI in a subprocess
def test_metrics_port_without_the_metrics_extra_exits_2_with_the_hint(tmp_path: Path) -> None:
    import subprocess

    cfg = tmp_path / "p.yaml"
    cfg.write_text(GOOD)
    shim = (
        "import sys; sys.modules['prometheus_client'] = None; "
        "from asyncingest.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", shim, "run", str(cfg), "--metrics-port", "0"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'asyncingest[metrics]'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "output").exists()  # refused before the run started


# -- what stderr carries: JSON lines only, one line when quiet, a resume command in one piece ---


def write_budget_config(tmp_path: Path, url: str) -> Path:
    """The F1 crawl under a daily budget of 3 requests, stopping when it is used up."""
    path = write_config(tmp_path, url)
    raw = yaml.safe_load(path.read_text())
    raw["api"]["rate_limits"] = [{"requests": 3, "per_seconds": 86_400}]
    raw["api"]["on_budget_exhausted"] = "stop"
    raw["api"]["budget_wait_threshold"] = 30
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_json_log_format_puts_only_json_lines_on_stderr(tmp_path: Path) -> None:
    async with MockAPI(MockSettings.small(fault_rate=0.2)) as api:
        cfg = write_budget_config(tmp_path, api.url)
        code, out, err = await cli("run", str(cfg), "--log-format", "json", "--log-level", "info")
    assert code == 3, err
    lines = [orjson.loads(line) for line in err.splitlines()]  # every line, or this raises
    assert out == ""
    events = [x["event"] for x in lines]
    assert "budget_exhausted" in events and "run_started" in events
    (summary,) = [x for x in lines if x["event"] == "run_summary"]
    assert lines[-1] is summary
    assert summary["exit_code"] == 3 and summary["stopped"] is True
    assert summary["resume"] == f"python -m asyncingest run {cfg}"
    assert summary["requests"] == 3 == sum(e["requests"] for e in summary["endpoints"])


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_json_log_format_turns_a_config_error_into_one_json_line(tmp_path: Path) -> None:
    code, out, err = await cli("run", str(tmp_path / "nope.yaml"), "--log-format", "json")
    assert code == 2
    (line,) = [orjson.loads(x) for x in err.splitlines()]
    assert line["level"] == "error" and line["source"] == str(tmp_path / "nope.yaml")
    code, out, err = await cli("run", "x.yaml", "--log-format", "json", "--workers", "-3")
    assert code == 2 and out == ""
    (line,) = [orjson.loads(x) for x in err.splitlines()]
    assert "--workers" in line["message"]


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_quiet_prints_one_summary_line_even_with_failures_and_a_stop(
    tmp_path: Path,
) -> None:
    async with MockAPI(MockSettings.small(fault_rate=0.3)) as api:
        cfg = write_budget_config(tmp_path, api.url)
        code, out, err = await cli("run", str(cfg), "--quiet")
        assert code == 3, err
        assert out == "" and len(err.splitlines()) == 1, err
        assert err.startswith("run ") and f"to resume: python -m asyncingest run {cfg}" in err
        failing = write_config(tmp_path, api.url)
        raw = yaml.safe_load(failing.read_text())
        raw["api"]["retry"] = {"max_attempts": 1}
        raw["output"]["directory"] = str(tmp_path / "failing")
        failing.write_text(yaml.safe_dump(raw))
        code, out, err = await cli("run", str(failing), "--quiet")
    assert code == 1, err
    assert out == "" and len(err.splitlines()) == 1, err
    assert "finished with failures" in err and "(exit 1)" in err


@pytest.mark.slow  # runs the CLI in a subprocess
async def test_the_resume_command_is_one_line_however_narrow_the_terminal(tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 6) / ("and-another-one-" * 6) / "out"
    async with MockAPI(MockSettings.small()) as api:
        cfg = write_budget_config(tmp_path, api.url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncingest",
            "run",
            str(cfg),
            "--output",
            str(deep),
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "40"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err_bytes = await proc.communicate()
    err = err_bytes.decode()
    assert proc.returncode == 3, err
    (line,) = [x for x in err.splitlines() if "to resume:" in x]
    assert line.endswith(f"to resume: python -m asyncingest run {cfg} --output {deep}")
    (output,) = [x for x in err.splitlines() if x.startswith("output: ")]
    assert output == f"output: {deep}"
