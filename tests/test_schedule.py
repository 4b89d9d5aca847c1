"""Release timing per type (SPEC 2) and weekly slots, with a frozen clock: `now` is data."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from broker.domain.schedule import (
    ScheduleError,
    StaggerPolicy,
    TypeTiming,
    due,
    effective_release,
    local_instant,
    release_time,
)
from broker.errors import BrokerError, ConfigError

HEL = ZoneInfo("Europe/Helsinki")
NEXT_DAY = TypeTiming("next_day", time(6, 0))
IMMEDIATE = TypeTiming("immediate")
POLICY = StaggerPolicy()


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def hel(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=HEL)


# --- TypeTiming.parse ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("immediate", IMMEDIATE),
        ("  Immediate ", IMMEDIATE),
        ("next-day 06:00", NEXT_DAY),
        ("next-day", NEXT_DAY),
        ("next-day 6:30", TypeTiming("next_day", time(6, 30))),
        ("next-day 23:59", TypeTiming("next_day", time(23, 59))),
        ("NEXT-DAY   00:00", TypeTiming("next_day", time(0, 0))),
    ],
)
def test_parse_accepts(text: str, expected: TypeTiming) -> None:
    assert TypeTiming.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "later", "next day 06:00", "next_day 06:00", "next-day 24:00", "next-day 06:60",
     "next-day 6", "next-day 06:00:00", "immediate 06:00", "next-day06:00x"],
)
def test_parse_rejects_with_readable_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"release timing .* ") as info:
        TypeTiming.parse(text)
    # One error tree: also a BrokerError / ConfigError for the config loader.
    assert isinstance(info.value, ConfigError)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("timing", [IMMEDIATE, NEXT_DAY, TypeTiming("next_day", time(7, 5))])
def test_str_round_trips(timing: TypeTiming) -> None:
    assert TypeTiming.parse(str(timing)) == timing


def test_unknown_kind_rejected() -> None:
    with pytest.raises(ScheduleError, match="unknown release timing kind"):
        TypeTiming("tomorrow")  # type: ignore[arg-type]


# --- release_time ---------------------------------------------------------------------


def test_immediate_is_received_time_in_utc() -> None:
    received = hel(2026, 5, 4, 14, 7, 3)
    got = release_time(IMMEDIATE, decision_date=date(2026, 5, 1), urgent=False,
                       received=received, tz="Europe/Helsinki")
    assert got == received
    assert got.tzinfo is UTC
    assert got == utc(2026, 5, 4, 11, 7, 3)


def test_next_day_is_0600_helsinki_the_day_after_decision_summer() -> None:
    got = release_time(NEXT_DAY, decision_date=date(2026, 6, 10), urgent=False,
                       received=utc(2026, 6, 10, 12), tz="Europe/Helsinki")
    assert got == utc(2026, 6, 11, 3)  # EEST, UTC+3
    assert got.tzinfo is UTC


def test_next_day_winter() -> None:
    got = release_time(NEXT_DAY, decision_date=date(2026, 1, 14), urgent=False,
                       received=utc(2026, 1, 14, 12), tz="Europe/Helsinki")
    assert got == utc(2026, 1, 15, 4)  # EET, UTC+2


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        # Decision on Saturday, release Sunday, the day clocks go forward (03:00 -> 04:00).
        (date(2026, 3, 28), utc(2026, 3, 29, 3)),
        # Decision on Saturday, release Sunday, the day clocks go back (04:00 -> 03:00).
        (date(2026, 10, 24), utc(2026, 10, 25, 4)),
        (date(2027, 3, 27), utc(2027, 3, 28, 3)),
        (date(2027, 10, 30), utc(2027, 10, 31, 4)),
        # The DST day itself as decision date: release the day after, already switched.
        (date(2026, 3, 29), utc(2026, 3, 30, 3)),
        (date(2026, 10, 25), utc(2026, 10, 26, 4)),
    ],
)
def test_next_day_around_dst_change(decision: date, expected: datetime) -> None:
    got = release_time(NEXT_DAY, decision_date=decision, urgent=False,
                       received=utc(2026, 1, 1), tz="Europe/Helsinki")
    assert got == expected
    local = got.astimezone(HEL)
    assert (local.date(), local.time()) == (decision + timedelta(days=1), time(6, 0))


def test_next_day_across_year_boundary() -> None:
    got = release_time(NEXT_DAY, decision_date=date(2026, 12, 31), urgent=False,
                       received=hel(2026, 12, 31, 23, 59), tz="Europe/Helsinki")
    assert got == utc(2027, 1, 1, 4)
    leap = release_time(NEXT_DAY, decision_date=date(2028, 2, 28), urgent=False,
                        received=utc(2028, 2, 28), tz="Europe/Helsinki")
    assert leap == utc(2028, 2, 29, 4)


def test_next_day_custom_time_and_zone() -> None:
    timing = TypeTiming.parse("next-day 08:30")
    got = release_time(timing, decision_date=date(2026, 7, 1), urgent=False,
                       received=utc(2026, 7, 1), tz="Europe/Mariehamn")
    assert got == utc(2026, 7, 2, 5, 30)


def test_next_day_in_the_past_is_not_clamped() -> None:
    # A late batch: the release time is already past, which the release pass reads as now.
    received = utc(2026, 4, 20, 12)
    got = release_time(NEXT_DAY, decision_date=date(2026, 4, 1), urgent=False,
                       received=received, tz="Europe/Helsinki")
    assert got == utc(2026, 4, 2, 3)
    assert due(got, received)


def test_urgent_overrides_next_day() -> None:
    received = hel(2026, 3, 10, 15, 30)
    got = release_time(NEXT_DAY, decision_date=date(2026, 3, 10), urgent=True,
                       received=received, tz="Europe/Helsinki")
    assert got == received
    assert due(got, received)
    normal = release_time(NEXT_DAY, decision_date=date(2026, 3, 10), urgent=False,
                          received=received, tz="Europe/Helsinki")
    assert not due(normal, received)


def test_naive_datetimes_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        release_time(IMMEDIATE, decision_date=date(2026, 1, 1), urgent=False,
                     received=datetime(2026, 1, 1, 12), tz="Europe/Helsinki")
    with pytest.raises(ValueError, match="timezone-aware"):
        due(utc(2026, 1, 1), datetime(2026, 1, 1))


def test_unknown_zone_is_a_config_error() -> None:
    with pytest.raises(ScheduleError, match="unknown time zone 'Europe/Helsingfors'"):
        release_time(NEXT_DAY, decision_date=date(2026, 1, 1), urgent=False,
                     received=utc(2026, 1, 1), tz="Europe/Helsingfors")


# --- due / effective_release ----------------------------------------------------------


def test_due_boundaries() -> None:
    now = utc(2026, 4, 6, 3)
    assert due(now, now)
    assert due(now - timedelta(microseconds=1), now)
    assert not due(now + timedelta(microseconds=1), now)
    assert not due(None, now)
    # Offsets do not matter, instants do.
    assert due(hel(2026, 4, 6, 6), now)
    assert due(now, datetime(2026, 4, 6, 6, tzinfo=timezone(timedelta(hours=3))))


def test_effective_release_prefers_plan() -> None:
    normal = utc(2026, 4, 6, 3)
    planned = utc(2026, 4, 13, 3)
    assert effective_release(normal, planned) == planned
    # Arrived after the backlog was formed: no plan, normal timing.
    assert effective_release(hel(2026, 4, 6, 6), None) == normal


# --- local_instant --------------------------------------------------------------------


def test_local_instant_skipped_and_repeated_hours_give_one_instant() -> None:
    # 03:30 does not exist on 2026-03-29 in Helsinki: the wall clock shows 04:30.
    gap = local_instant(date(2026, 3, 29), time(3, 30), HEL)
    assert gap == utc(2026, 3, 29, 1, 30)
    assert gap.astimezone(HEL).time() == time(4, 30)
    # 03:30 happens twice on 2026-10-25: the first occurrence (still EEST) is taken.
    fold = local_instant(date(2026, 10, 25), time(3, 30), HEL)
    assert fold == utc(2026, 10, 25, 0, 30)
    assert local_instant(date(2026, 10, 25), time(3, 30, fold=1), HEL) == fold


# --- StaggerPolicy validation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": -1}, "threshold must be 0 or more"),
        ({"threshold": 1.5}, "threshold must be a whole number"),
        ({"portion": 0}, "portion must be a whole number >= 1"),
        ({"portion": True}, "portion must be a whole number >= 1"),
        ({"weekday": 7}, "weekday must be 0 .Monday. to 6 .Sunday."),
        ({"at": "06:00"}, "time must be a time of day"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_policy_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError, match=message) as info:
        StaggerPolicy(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, BrokerError)
    assert isinstance(info.value, ValueError)


def test_policy_describe() -> None:
    assert POLICY.describe() == (
        "more than 400: 300 at once, then 300 each Monday 06:00 Europe/Helsinki"
    )
