"""The one error table: each class's code and flags, the tree, and README's table."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

from turnout import errors
from turnout.errors import (
    BackendProtocolError,
    BackendStatusError,
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    InternalError,
    InvalidReplyTopic,
    InvalidRequest,
    NoBackendAvailable,
    RateLimited,
    ReplyUnpublishable,
    RequestTooLarge,
    RouteNotAllowed,
    StartupError,
    TurnoutError,
    UnknownModel,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("turnout", "streams", "agents", "schemas")

TABLE: list[tuple[type[TurnoutError], str, bool, bool, int]] = [
    # class, code, retryable, dead_letter, http_status
    (InvalidRequest, "invalid_request", False, True, 400),
    (RequestTooLarge, "request_too_large", False, True, 413),
    (InvalidReplyTopic, "invalid_reply_topic", False, True, 400),
    (UnknownModel, "unknown_model", False, True, 404),
    (RouteNotAllowed, "route_not_allowed", False, False, 403),
    (InternalError, "internal_error", False, True, 502),
    (ReplyUnpublishable, "reply_unpublishable", False, True, 502),
    (DeadlineExceeded, "deadline_exceeded", True, False, 504),
    (RateLimited, "rate_limited", True, False, 429),
    (NoBackendAvailable, "no_backend_available", True, False, 503),
    (BackendUnavailable, "backend_unavailable", True, False, 502),
    (BackendTimeout, "backend_timeout", True, False, 502),
    (BackendProtocolError, "backend_protocol", True, False, 502),
]


def _all_modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        module = importlib.import_module(pkg)
        names.append(pkg)
        names += [i.name for i in pkgutil.walk_packages(module.__path__, pkg + ".")]
    return names


@functools.cache
def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _all_modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == name:
                found[f"{name}.{cls_name}"] = cls
    return found


@pytest.mark.parametrize(("cls", "code", "retryable", "dead_letter", "status"), TABLE)
def test_each_error_class_carries_its_code_and_flags(
    cls: type[TurnoutError], code: str, retryable: bool, dead_letter: bool, status: int
) -> None:
    """An instance carries the class's code, retryability, dead-letter flag and HTTP status."""
    exc = cls("m", backend="b") if issubclass(cls, errors.BackendError) else cls("m")
    assert (exc.code, exc.retryable, exc.dead_letter, exc.http_status) == (
        code,
        retryable,
        dead_letter,
        status,
    )
    assert errors.for_code(code) is cls
    assert errors.http_status(code, retryable) == status


@pytest.mark.parametrize(
    ("status", "retryable", "http"),
    [(503, True, 502), (500, True, 502), (429, True, 502), (404, False, 400), (400, False, 400)],
)
def test_a_backend_status_error_is_retryable_and_a_502_only_for_5xx_and_429(
    status: int, retryable: bool, http: int
) -> None:
    """A backend's 4xx refusal is the caller's 400; its 5xx or 429 is a retryable 502."""
    exc = BackendStatusError("m", backend="b", status=status)
    assert (exc.code, exc.retryable, exc.dead_letter, exc.http_status) == (
        "backend_status",
        retryable,
        False,
        http,
    )
    assert errors.http_status("backend_status", retryable) == http


def test_the_table_covers_every_reply_error() -> None:
    """Every error a reply can carry is in the table above, and nothing else is."""
    assert {row[0] for row in TABLE} | {BackendStatusError} == set(errors.REPLY_ERRORS)


def test_reply_error_codes_are_unique() -> None:
    """No two reply errors share a code: the gateway finds the class by its code."""
    codes = [cls.code for cls in errors.REPLY_ERRORS]
    assert len(codes) == len(set(codes))


def test_an_unknown_code_is_a_502() -> None:
    """A code this version does not know (a newer worker's) is answered 502."""
    assert errors.for_code("from_the_future") is None
    assert errors.http_status("from_the_future", retryable=False) == 502


def test_every_exception_class_is_in_the_tree_or_kept_out_on_purpose() -> None:
    """Each exception class of the package is a TurnoutError or listed in ``OUTSIDE``."""
    classes = _exception_classes()
    assert classes, "no exception classes found: the walk is broken"
    stray = sorted(
        name
        for name, cls in classes.items()
        if not issubclass(cls, TurnoutError) and cls.__name__ not in errors.OUTSIDE
    )
    assert stray == [], (
        f"add these to turnout/errors.py's tree (or to OUTSIDE, saying why): {stray}"
    )
    outside = {cls.__name__ for cls in classes.values() if not issubclass(cls, TurnoutError)}
    assert outside == errors.OUTSIDE, "OUTSIDE names a class that no longer exists"


def test_every_class_in_the_tree_is_drawn_in_the_docstring() -> None:
    """The tree drawn in errors.py's docstring names every TurnoutError subclass."""
    _exception_classes()  # import every module, so every subclass exists
    drawn = set(re.findall(r"[├└]── (\w+)", errors.__doc__ or ""))
    assert drawn == {cls.__name__ for cls in errors._classes()} - {"TurnoutError"}


def test_the_drawn_tree_gives_each_class_its_code() -> None:
    """Each line of the drawn tree that names a code names the class's code."""
    _exception_classes()
    by_name = {cls.__name__: cls for cls in errors._classes()}
    lines = re.findall(r"[├└]── (\w+) +([a-z_]+)\b", errors.__doc__ or "")
    bases = {"TurnoutError", "RequestError", "BackendError", "StartupError"}  # drawn, no code
    assert {name for name, _ in lines} == set(by_name) - bases
    for name, code in lines:
        assert by_name[name].code == code, name


OTHERS = [
    # class, code, http_status: errors never on the wire, defined beside their code
    ("LocalHealthError", "health_state", 500),
    ("InvalidHealthRecord", "invalid_health_record", 500),
    ("InvalidRegionState", "invalid_region_state", 500),
    ("WebhookRefused", "webhook_refused", 400),
    ("SecurityConfigError", "invalid_security_config", 500),
    ("KafkaStartupError", "kafka_unusable", 500),
    ("DataDirInUse", "data_dir_in_use", 500),
    ("ReplayError", "replay_refused", 500),
]


def by_name(name: str) -> type[BaseException]:
    """An exception class of the package by its name, wherever its module lives."""
    (cls,) = [c for c in _exception_classes().values() if c.__name__ == name]
    return cls


@pytest.mark.parametrize(("name", "code", "status"), OTHERS)
def test_each_error_outside_the_reply_table_has_its_code_and_is_never_retried(
    name: str, code: str, status: int
) -> None:
    """Health, region, webhook and startup errors: a code, not retryable, not dead-lettered."""
    cls = by_name(name)
    exc = cls("m")
    assert isinstance(exc, TurnoutError) and exc.message == "m"
    assert (exc.code, exc.retryable, exc.dead_letter, exc.http_status) == (
        code,
        False,
        False,
        status,
    )
    assert cls not in errors.REPLY_ERRORS


def test_startup_errors_keep_the_library_bases_callers_catch() -> None:
    """Brought into the tree, the errors keep the library bases their callers catch."""
    assert issubclass(by_name("SecurityConfigError"), ValueError)
    assert issubclass(by_name("DataDirInUse"), RuntimeError)
    assert issubclass(by_name("InvalidRegionState"), ValueError)
    assert issubclass(by_name("WebhookRefused"), ValueError)
    config_error = by_name("ConfigError")
    err = config_error("config.yaml", ["routes: missing", "backends: empty"])
    assert isinstance(err, StartupError) and err.code == "invalid_config"
    assert err.problems == ["routes: missing", "backends: empty"]  # type: ignore[attr-defined]
    assert str(err).startswith("config.yaml: 2 problem(s):")


def _readme_rows() -> list[tuple[list[str], str, bool, int]]:
    text = (ROOT / "README.md").read_text()
    head = "| error code | retryable | HTTP | meaning |"
    assert head in text, "README's error table has lost its header"
    rows = []
    for line in text.split(head, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        codes_cell, retry_cell, http_cell, _ = (c.strip() for c in line.strip("|").split("|", 3))
        qualifier = re.search(r"\(([^)]*)\)", codes_cell)
        rows.append(
            (
                re.findall(r"`([a-z_]+)`", codes_cell),
                qualifier.group(1) if qualifier else "",
                {"yes": True, "no": False}[retry_cell],
                int(http_cell),
            )
        )
    return rows


def test_readmes_error_table_matches_the_classes() -> None:
    """README lists each reply error once (backend_status per retryability), with the
    class's retryability and HTTP status."""
    seen: list[tuple[str, bool]] = []
    for codes, _qualifier, retryable, status in _readme_rows():
        for code in codes:
            cls = errors.for_code(code)
            assert cls is not None, f"README names {code!r}, which no error class has"
            if cls is not BackendStatusError:
                assert retryable == cls.retryable, f"README's retryable for {code}"
            assert errors.http_status(code, retryable) == status, f"README's HTTP for {code}"
            seen.append((code, retryable))
    expected = [(c.code, c.retryable) for c in errors.REPLY_ERRORS if c is not BackendStatusError]
    expected += [("backend_status", True), ("backend_status", False)]
    assert sorted(seen) == sorted(expected)
