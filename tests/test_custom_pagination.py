"""``pagination: {type: custom, function: module:Class}``: the user's paginator walks like a
built-in one (both engines, ``plan``), resumes where a stopped run left off, and a bad reference
is a config error naming the field and what is expected.

The paginator under test is the shipped example, :class:`asyncingest.examples.keyset.
KeysetPaginator`, against the mock API's keyset route ``/v2/weather``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import asyncingest
from asyncingest import Page, Request, config_from_dict
from asyncingest.cli.main import main
from asyncingest.examples.keyset import KeysetPaginator
from asyncingest.mockapi import MockAPI
from asyncingest.operate.sample import plan

from .conftest import Runner, read_records

KEYSET = "asyncingest.examples.keyset:KeysetPaginator"
OPTIONS = {"keys": {"after_date": "date", "after_session": "session_key"}, "limit": 5}


def weather(url: str, out: Path, **pagination: Any) -> asyncingest.PipelineConfig:
    spec = {"type": "custom", "function": KEYSET, "options": OPTIONS, **pagination}
    return config_from_dict(
        {
            "api": {"base_url": url, "retry": {"max_attempts": 2, "backoff_base": 0.01}},
            "output": {"directory": str(out)},
            "endpoints": [
                {
                    "name": "weather",
                    "path": "/v2/weather",
                    "records": "data",
                    "primary_key": ["session_key", "date"],
                    "pagination": spec,
                }
            ],
        }
    )


def keys(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return sorted((r["date"], r["session_key"]) for r in rows)


def pages_for(api: MockAPI, limit: int = 5) -> int:
    return -(-len(api.dataset.weather) // limit)


async def test_a_custom_paginator_walks_every_page_once(
    engine: Runner, mock_api: MockAPI, tmp_path: Path
) -> None:
    result = await engine(weather(mock_api.url, tmp_path))
    assert result.ok
    assert keys(read_records(tmp_path, "weather")) == keys(mock_api.dataset.weather)
    # has_more: false ends the walk: no empty page asked for.
    assert mock_api.stats.by_path["/v2/weather"] == pages_for(mock_api)


class StopsAt(KeysetPaginator):
    """The example, calling ``hook(page index)`` first: a test stops the run at a known page."""

    hook: Callable[[int], None] | None = None

    def next(self, page: Page) -> Request | None:
        if StopsAt.hook is not None:
            StopsAt.hook(page.request.page)
        return super().next(page)


async def test_a_stopped_walk_resumes_at_the_next_page(mock_api: MockAPI, tmp_path: Path) -> None:
    cfg = weather(mock_api.url, tmp_path, function=f"{__name__}:StopsAt")
    engine = asyncingest.Engine(cfg)

    def stop_after_third_page(index: int) -> None:
        if index == 2:
            engine.stop()

    StopsAt.hook = stop_after_third_page
    try:
        first = await engine.run()
    finally:
        StopsAt.hook = None
    assert first.stopped and mock_api.stats.by_path["/v2/weather"] == 3
    state = (tmp_path / "_asyncingest" / "state.json").read_text()
    assert "after_date" in state  # the resume point is the fourth page's request

    second = await asyncingest.run(cfg)
    assert second.ok and second.note == "resumed"
    # Every row exactly once, and no page asked for twice.
    assert keys(read_records(tmp_path, "weather")) == keys(mock_api.dataset.weather)
    assert mock_api.stats.by_path["/v2/weather"] == pages_for(mock_api)


async def test_plan_samples_through_the_custom_paginator(mock_api: MockAPI) -> None:
    est = await plan(weather(mock_api.url, Path("unused")))
    row = est.endpoints[0]
    assert row.failed_walks == 0 and not est.unknown
    assert row.pages_per_job.value == pages_for(mock_api)


class Broken:
    """Pages once, then fails the way user code does."""

    def __init__(self, fail: str) -> None:
        self.fail = fail

    def first(self, request: Request) -> Request:
        if self.fail == "first":
            raise KeyError("cursor")
        return request.with_params(limit="5")

    def next(self, page: Page) -> Request | None:
        if self.fail == "next":
            raise KeyError("meta")
        if self.fail == "type":
            return {"url": "/v2/weather"}  # type: ignore[return-value]
        return page.request  # the same page again


@pytest.mark.parametrize(
    ("fail", "reason"),
    [
        ("next", "next() raised KeyError: 'meta'"),
        ("type", "next() returned dict, not a Request"),
        ("loop", "next() returned the current page's request"),
    ],
)
async def test_a_failing_custom_paginator_dead_letters_its_walk(
    engine: Runner, mock_api: MockAPI, tmp_path: Path, fail: str, reason: str
) -> None:
    """The page in hand is kept; the walk ends with the reason; the run goes on (exit 1)."""
    cfg = weather(mock_api.url, tmp_path, function=f"{__name__}:Broken", options={"fail": fail})
    result = await engine(cfg)
    assert result.exit_code == 1
    assert len(read_records(tmp_path, "weather")) == 5
    dead = (tmp_path / "_dead_letter" / "weather" / "dead-letters.jsonl").read_text()
    assert reason in dead


async def test_a_custom_paginator_whose_first_fails_refuses_the_job(
    engine: Runner, mock_api: MockAPI, tmp_path: Path
) -> None:
    cfg = weather(mock_api.url, tmp_path, function=f"{__name__}:Broken", options={"fail": "first"})
    result = await engine(cfg)
    assert result.exit_code == 1 and mock_api.stats.requests == 0
    dead = (tmp_path / "_dead_letter" / "weather" / "dead-letters.jsonl").read_text()
    assert "first() raised KeyError: 'cursor'" in dead


def test_state_that_is_not_json_ends_the_walk_with_the_reason() -> None:
    from dataclasses import replace

    from yarl import URL

    from asyncingest.config.models import CustomPagination
    from asyncingest.core.pagination import CustomPaginator, PaginatorFailed

    paginator = CustomPaginator(CustomPagination(type="custom", function=KEYSET, options=OPTIONS))
    request = paginator.first(Request("GET", URL("http://h/v2/weather")))
    assert request.params == (("limit", "5"),) and request.state is None
    page = Page(request, 200, {}, {"meta": {"has_more": True}}, [{"date": "d", "session_key": 1}])
    nxt = paginator.next(page)
    assert nxt is not None and nxt.page == 1 and nxt.state == ["d", 1]
    paginator.inner.next = lambda page: replace(page.request, state={1, 2})  # type: ignore[method-assign]
    with pytest.raises(PaginatorFailed, match="state is not JSON data"):
        paginator.next(page)


BAD_SPECS = [
    ("nowhere.at_all:Pager", "cannot import 'nowhere.at_all'"),
    ("asyncingest.examples.keyset:NoSuchClass", "has no attribute 'NoSuchClass'"),
    ("collections:OrderedDict", "has no first(request) method"),
    (f"{__name__}:OnlyFirst", "has no next(page) method"),
    (f"{__name__}:TwoArgumentNext", "cannot be called as next(page)"),
]


class OnlyFirst:
    def first(self, request: Request) -> Request:
        return request


class TwoArgumentNext(OnlyFirst):
    def next(self, page: Page, other: int) -> Request | None:
        return None


@pytest.mark.parametrize(("function", "expected"), BAD_SPECS)
def test_a_bad_custom_paginator_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], function: str, expected: str
) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "api: {base_url: 'http://127.0.0.1:9'}\n"
        "endpoints:\n"
        f"  - {{name: w, path: /w, pagination: {{type: custom, function: '{function}'}}}}\n"
    )
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr()
    text = err.out + err.err
    assert "endpoints[w].pagination.function" in text and expected in text
    assert "first(request) -> Request and next(page) -> Request | None" in text or (
        "cannot import" in text or "has no attribute" in text
    )
    assert "Traceback" not in text


def test_options_a_paginator_does_not_take_are_a_config_error() -> None:
    with pytest.raises(asyncingest.ConfigError, match="cannot be built with bogus, keys"):
        weather("http://127.0.0.1:9", Path("o"), options={**OPTIONS, "bogus": 1})


async def test_validate_names_the_custom_paginator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "api: {base_url: 'http://127.0.0.1:9'}\n"
        "endpoints:\n"
        "  - name: w\n"
        "    path: /w\n"
        f"    pagination: {{type: custom, function: '{KEYSET}', options: {{keys: {{a: b}}}}}}\n"
    )
    code = await asyncio.to_thread(main, ["validate", str(cfg)])
    assert code == 0
    assert f"custom ({KEYSET})" in capsys.readouterr().out


# -- edges mutation testing found unguarded (nox -s mutants -- pagination) --------------------


class ReturnsWhatItIsTold:
    """A custom paginator whose answers the test sets."""

    first_answer: object = None
    next_answer: object = None

    def first(self, request: Request) -> Request:
        return self.first_answer  # type: ignore[return-value]

    def next(self, page: Page) -> Request | None:
        return self.next_answer  # type: ignore[return-value]


def test_a_custom_paginator_held_to_the_protocol_names_itself_and_the_method() -> None:
    from yarl import URL

    from asyncingest.config.models import CustomPagination
    from asyncingest.core.pagination import CustomPaginator, PaginatorFailed

    ref = f"{__name__}:ReturnsWhatItIsTold"
    paginator = CustomPaginator(CustomPagination(type="custom", function=ref))
    inner = paginator.inner
    assert isinstance(inner, ReturnsWhatItIsTold)
    request = Request("GET", URL("http://h/x"), page=3)
    inner.first_answer = 7
    with pytest.raises(PaginatorFailed, match=rf"^{ref}: first\(\) returned int, not a Request$"):
        paginator.first(request)
    inner.first_answer = Request("GET", URL("http://h/x"), state={1})
    with pytest.raises(
        PaginatorFailed,
        match=rf"^{ref}: first\(\) returned a request whose state is not JSON data \(TypeError",
    ):
        paginator.first(request)
    inner.first_answer = Request("GET", URL("http://h/x"), page=0)
    assert paginator.first(request).page == 3  # numbered as the request it was given
    page = Page(request, 200, {}, {}, [])
    inner.next_answer = {"url": "x"}
    with pytest.raises(
        PaginatorFailed, match=rf"^{ref}: next\(\) returned dict, not a Request \(or None\)$"
    ):
        paginator.next(page)
