"""Staggered first delivery (SPEC 4): the plan, what is due when, and the schedule view.

The clock is frozen: every `now` is a literal. A small release-pass simulation
(`run_passes`) plays the store's part: it releases due portions and remembers them,
as the store does by marking rows released in the same transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.schedule import (
    Candidate,
    HeldItem,
    PlannedRelease,
    StaggerPolicy,
    due_groups,
    oldest_first,
    plan_first_delivery,
    portion_times,
)

HEL = ZoneInfo("Europe/Helsinki")
POLICY = StaggerPolicy()


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def hel(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=HEL)


def backlog(n: int, start: date = date(2026, 1, 5)) -> list[Candidate]:
    """n candidates, decision dates spread over days, arrival order = index."""
    return [Candidate(f"N-{i:05d}", start + timedelta(days=i // 50), i) for i in range(n)]


def sizes(plan: Sequence[PlannedRelease]) -> list[int]:
    counts = Counter(p.portion for p in plan)
    return [counts[k] for k in sorted(counts)]


def times_by_portion(plan: Sequence[PlannedRelease]) -> dict[int, datetime]:
    out: dict[int, datetime] = {}
    for p in plan:
        assert out.setdefault(p.portion, p.release_at) == p.release_at
    return out


def due_portions(plan: Sequence[PlannedRelease], now: datetime,
                 released: Collection[int] = ()) -> list[int]:
    """The portions a release pass at ``now`` writes, asked the way the daemon asks:
    storage hands the held rows (a released portion's rows are no longer held) to
    ``due_groups``, which decides."""
    items = [HeldItem(k, "tampere", "IMMIGRANT", "notification", utc(2026, 1, 1),
                      p.release_at, p.portion, k)
             for k, p in enumerate(plan) if p.portion not in released]
    groups = due_groups(items, now)
    assert all(g.kind == "notification" for g in groups)
    return sorted({g.portion for g in groups if g.portion is not None})


def run_passes(plan: Sequence[PlannedRelease], passes: Sequence[datetime]) -> list[list[int]]:
    """Portions released at each pass; each pass sees what earlier passes released."""
    released: set[int] = set()
    out = []
    for now in passes:
        got = due_portions(plan, now, released=released)
        released.update(got)
        out.append(got)
    return out


# --- thresholds and sizes ------------------------------------------------------------

WED = hel(2026, 4, 8, 10, 0)  # a Wednesday morning


def test_400_exactly_is_not_staggered() -> None:
    assert plan_first_delivery(backlog(400), POLICY, WED) is None
    assert plan_first_delivery([], POLICY, WED) is None


def test_401_is_300_then_101_next_monday() -> None:
    plan = plan_first_delivery(backlog(401), POLICY, WED)
    assert plan is not None
    assert sizes(plan) == [300, 101]
    assert times_by_portion(plan) == {0: WED, 1: hel(2026, 4, 13, 6)}
    assert {p.id for p in plan} == {c.id for c in backlog(401)}


def test_1000_is_300_300_300_100_on_successive_mondays_0600_helsinki() -> None:
    plan = plan_first_delivery(backlog(1000), POLICY, WED)
    assert plan is not None
    assert sizes(plan) == [300, 300, 300, 100]
    assert times_by_portion(plan) == {
        0: utc(2026, 4, 8, 7),
        1: utc(2026, 4, 13, 3),
        2: utc(2026, 4, 20, 3),
        3: utc(2026, 4, 27, 3),
    }
    assert all(p.release_at.tzinfo is UTC for p in plan)


def test_custom_policy_from_config() -> None:
    policy = StaggerPolicy(threshold=10, portion=4, weekday=4, at=time(13, 0))
    plan = plan_first_delivery(backlog(11), policy, WED)
    assert plan is not None
    assert sizes(plan) == [4, 4, 3]
    assert times_by_portion(plan) == {0: WED, 1: hel(2026, 4, 10, 13), 2: hel(2026, 4, 17, 13)}
    assert plan_first_delivery(backlog(10), policy, WED) is None


def test_threshold_zero_staggers_everything() -> None:
    plan = plan_first_delivery(backlog(1), StaggerPolicy(threshold=0, portion=5), WED)
    assert plan is not None and sizes(plan) == [1]


# --- order -------------------------------------------------------------------------


def test_oldest_first_by_decision_date_then_arrival() -> None:
    # Arrival order deliberately disagrees with decision dates.
    cands = [
        Candidate("late-a", date(2026, 3, 2), 1),
        Candidate("old-b", date(2026, 1, 1), 7),
        Candidate("old-a", date(2026, 1, 1), 3),
        Candidate("mid", date(2026, 2, 1), 0),
        *[Candidate(f"fill-{i}", date(2026, 3, 3), 100 + i) for i in range(3)],
    ]
    policy = StaggerPolicy(threshold=4, portion=2)
    plan = plan_first_delivery(cands, policy, WED)
    assert plan is not None
    assert [(p.id, p.portion) for p in plan] == [
        ("old-a", 0), ("old-b", 0),
        ("mid", 1), ("late-a", 1),
        ("fill-0", 2), ("fill-1", 2),
        ("fill-2", 3),
    ]
    assert [c.id for c in oldest_first(cands)] == [p.id for p in plan]


def test_input_order_does_not_matter() -> None:
    cands = backlog(777)
    forward = plan_first_delivery(cands, POLICY, WED)
    reverse = plan_first_delivery(list(reversed(cands)), POLICY, WED)
    assert forward == reverse


def test_duplicate_candidate_ids_refused() -> None:
    cands = [*backlog(401), Candidate("N-00000", date(2026, 1, 1), 9999)]
    with pytest.raises(ValueError, match="repeated: N-00000"):
        plan_first_delivery(cands, POLICY, WED)


# --- when the plan is formed -----------------------------------------------------------
# Rule: portion 0 at once; portion 1 at the first slot on a *later local date* than the
# plan, then weekly. Never two portions on the same day.


def test_plan_formed_monday_before_0600_waits_for_next_monday() -> None:
    plan = plan_first_delivery(backlog(700), POLICY, hel(2026, 4, 6, 5, 0))
    assert plan is not None
    assert times_by_portion(plan) == {
        0: hel(2026, 4, 6, 5, 0),
        1: hel(2026, 4, 13, 6),  # not 06:00 the same day
        2: hel(2026, 4, 20, 6),
    }


def test_plan_formed_monday_after_0600_same_answer() -> None:
    plan = plan_first_delivery(backlog(700), POLICY, hel(2026, 4, 6, 7, 0))
    assert plan is not None
    assert times_by_portion(plan) == {
        0: hel(2026, 4, 6, 7, 0),
        1: hel(2026, 4, 13, 6),
        2: hel(2026, 4, 20, 6),
    }


def test_plan_formed_exactly_at_the_slot() -> None:
    plan = plan_first_delivery(backlog(401), POLICY, hel(2026, 4, 6, 6, 0))
    assert plan is not None
    assert times_by_portion(plan) == {0: hel(2026, 4, 6, 6), 1: hel(2026, 4, 13, 6)}


def test_plan_formed_sunday_next_portion_is_the_coming_monday() -> None:
    plan = plan_first_delivery(backlog(401), POLICY, hel(2026, 4, 12, 23, 30))
    assert plan is not None
    assert times_by_portion(plan)[1] == hel(2026, 4, 13, 6)


def test_plan_formed_late_sunday_utc_is_already_monday_in_helsinki() -> None:
    # 22:30 UTC Sunday = 01:30 Monday in Helsinki: the plan is a Monday plan.
    plan = plan_first_delivery(backlog(401), POLICY, utc(2026, 4, 5, 22, 30))
    assert plan is not None
    assert times_by_portion(plan)[1] == hel(2026, 4, 13, 6)


def test_portion_times_none() -> None:
    assert portion_times(WED, POLICY, 0) == []
    assert portion_times(WED, POLICY, 1) == [WED]


# --- daylight saving ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("formed", "mondays_utc"),
    [
        (hel(2026, 3, 18, 12), [utc(2026, 3, 23, 4), utc(2026, 3, 30, 3), utc(2026, 4, 6, 3)]),
        (hel(2026, 10, 14, 12), [utc(2026, 10, 19, 3), utc(2026, 10, 26, 4), utc(2026, 11, 2, 4)]),
        (hel(2027, 3, 17, 12), [utc(2027, 3, 22, 4), utc(2027, 3, 29, 3), utc(2027, 4, 5, 3)]),
        (hel(2027, 10, 20, 12), [utc(2027, 10, 25, 3), utc(2027, 11, 1, 4), utc(2027, 11, 8, 4)]),
    ],
)
def test_dst_weeks_no_shift_no_doubling(formed: datetime, mondays_utc: list[datetime]) -> None:
    plan = plan_first_delivery(backlog(1000), POLICY, formed)
    assert plan is not None
    by = times_by_portion(plan)
    assert [by[1], by[2], by[3]] == mondays_utc
    for t in mondays_utc:
        assert (t.astimezone(HEL).weekday(), t.astimezone(HEL).time()) == (0, time(6, 0))
    # An hourly release pass through the whole period releases each portion exactly once,
    # at the first pass at or after 06:00 local: never an hour early or late, never twice.
    hourly = [formed + timedelta(hours=h) for h in range(24 * 21)]
    released = run_passes(plan, hourly)
    firsts = {portion: hourly[i] for i, got in enumerate(released) for portion in got}
    assert sorted(firsts) == [0, 1, 2, 3]
    assert sum(len(got) for got in released) == 4
    assert [firsts[1], firsts[2], firsts[3]] == mondays_utc


def test_plan_formed_on_the_dst_sunday_night() -> None:
    # Formed in the repeated 03:xx hour of 25 October 2026: portion 1 is Monday 26th, once.
    plan = plan_first_delivery(backlog(401), POLICY, utc(2026, 10, 25, 1, 15))
    assert plan is not None
    assert times_by_portion(plan) == {0: utc(2026, 10, 25, 1, 15), 1: utc(2026, 10, 26, 4)}


# --- portions due: restarts, downtime, idempotence ---------------------------------------

def _plan_1000() -> list[PlannedRelease]:
    plan = plan_first_delivery(backlog(1000), POLICY, WED)
    assert plan is not None
    return plan


PLAN_1000 = _plan_1000()


def test_portion_0_is_due_at_once() -> None:
    assert due_portions(PLAN_1000, WED) == [0]
    assert due_portions(PLAN_1000, WED - timedelta(seconds=1)) == []


def test_restart_between_mondays_nothing_new_is_due() -> None:
    # Portion 0 went out on Wednesday; the broker restarts on Friday and Sunday night.
    released = {0}
    assert due_portions(PLAN_1000, hel(2026, 4, 10, 9), released=released) == []
    assert due_portions(PLAN_1000, hel(2026, 4, 13, 5, 59, 59), released=released) == []
    # The store passes only unreleased rows: same answer.
    unreleased = [p for p in PLAN_1000 if p.portion != 0]
    assert due_portions(unreleased, hel(2026, 4, 10, 9)) == []
    assert due_portions(PLAN_1000, hel(2026, 4, 13, 6), released=released) == [1]


def test_downtime_over_two_mondays_catches_up_two_portions_once() -> None:
    # Released portion 0 on Wednesday 8th, then down until Tuesday 21st 10:00.
    back = hel(2026, 4, 21, 10)
    assert due_portions(PLAN_1000, back, released={0}) == [1, 2]
    # Never more: portion 3 waits for its own Monday.
    passes = [WED, back, back, back + timedelta(days=2), hel(2026, 4, 27, 6), hel(2026, 5, 4, 6)]
    assert run_passes(PLAN_1000, passes) == [[0], [1, 2], [], [], [3], []]


def test_downtime_from_before_portion_0() -> None:
    # Plan formed, then the broker died before releasing anything; back after three Mondays.
    assert run_passes(PLAN_1000, [hel(2026, 5, 1, 12)]) == [[0, 1, 2, 3]]


def test_same_now_same_answer() -> None:
    now = hel(2026, 4, 20, 6, 30)
    first = due_portions(PLAN_1000, now, released={0})
    assert first == due_portions(PLAN_1000, now, released={0}) == [1, 2]
    assert plan_first_delivery(backlog(1000), POLICY, WED) == PLAN_1000


def test_rows_out_of_order_and_repeated_portions_reported_once() -> None:
    shuffled = list(reversed(PLAN_1000))
    assert due_portions(shuffled, hel(2026, 6, 1)) == [0, 1, 2, 3]


# --- schedule view -------------------------------------------------------------------------


# --- properties ----------------------------------------------------------------------------

ZONES = ["Europe/Helsinki", "Europe/Mariehamn", "UTC", "America/New_York",
         "Australia/Lord_Howe", "Asia/Kolkata"]

policies = st.builds(
    StaggerPolicy,
    threshold=st.integers(0, 60),
    portion=st.integers(1, 40),
    weekday=st.integers(0, 6),
    at=st.times(),
    timezone=st.sampled_from(ZONES),
)
instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[StaggerPolicy, list[Candidate], datetime]:
    policy = draw(policies)
    n = draw(st.integers(policy.threshold + 1, policy.threshold + 200))
    days = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
    seqs = draw(st.permutations(range(n)))
    cands = [Candidate(f"id{i}", date(2026, 1, 1) + timedelta(days=d), s)
             for i, (d, s) in enumerate(zip(days, seqs, strict=True))]
    return policy, cands, draw(instants)


def local_slot_ok(t: datetime, policy: StaggerPolicy) -> bool:
    local = t.astimezone(ZoneInfo(policy.timezone))
    if local.weekday() != policy.weekday:
        return False
    if local.time() == policy.at:
        return True
    # Otherwise the policy time must not exist that day (skipped hour of a DST change),
    # and the slot is pushed forward by at most the skipped amount.
    tz = ZoneInfo(policy.timezone)
    wall = datetime.combine(local.date(), policy.at, tzinfo=tz)
    exists = wall.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall.replace(tzinfo=None)
    shift = local.replace(tzinfo=None) - wall.replace(tzinfo=None)
    return not exists and timedelta(0) < shift <= timedelta(hours=1)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_property_plan_shape(case: tuple[StaggerPolicy, list[Candidate], datetime]) -> None:
    policy, cands, now = case
    plan = plan_first_delivery(cands, policy, now)
    assert plan is not None
    # Every candidate exactly once.
    assert sorted(p.id for p in plan) == sorted(c.id for c in cands)
    # All portions full except the last.
    s = sizes(plan)
    assert all(k == policy.portion for k in s[:-1]) and 1 <= s[-1] <= policy.portion
    assert sorted(Counter(p.portion for p in plan)) == list(range(len(s)))
    # Oldest first: portions never go backwards along (decision date, seq).
    order = {c.id: (c.decision_date, c.seq) for c in cands}
    keys = [order[p.id] for p in plan]
    assert keys == sorted(keys)
    assert [p.portion for p in plan] == sorted(p.portion for p in plan)
    # Release times: portion 0 now, then strictly increasing, each later slot on the policy
    # weekday and time, the first on a later local date than now and within 8 days.
    by = times_by_portion(plan)
    times = [by[k] for k in range(len(s))]
    assert times[0] == now
    assert all(a < b for a, b in pairwise(times))
    assert all(local_slot_ok(t, policy) for t in times[1:])
    if len(times) > 1:
        tz = ZoneInfo(policy.timezone)
        assert times[1].astimezone(tz).date() > now.astimezone(tz).date()
        assert times[1] - now <= timedelta(days=8)


@settings(max_examples=100, deadline=None)
@given(cases(), st.lists(st.integers(0, 60 * 24 * 7 * 12), min_size=1, max_size=25))
def test_property_passes_release_each_portion_once_in_order(
    case: tuple[StaggerPolicy, list[Candidate], datetime], offsets: list[int]
) -> None:
    policy, cands, now = case
    plan = plan_first_delivery(cands, policy, now)
    assert plan is not None
    passes = [now + timedelta(minutes=m) for m in sorted(offsets)]
    released = run_passes(plan, passes)
    flat = [p for got in released for p in got]
    assert flat == sorted(set(flat))  # each at most once, in portion order
    by = times_by_portion(plan)
    assert set(flat) == {k for k, t in by.items() if t <= passes[-1]}
    # Idempotent: asking again at the last pass with what was released finds nothing.
    assert due_portions(plan, passes[-1], released=set(flat)) == []


def test_due_groups_decide_what_a_pass_writes() -> None:
    """The daemon's release pass asks exactly this: a list alone, notifications per
    (organisation, type, portion) in arrival order, a plan's time over the normal one."""
    now = utc(2026, 4, 8, 12)
    hour, day = timedelta(hours=1), timedelta(days=1)
    items = [
        HeldItem(1, "a", "IMMIGRANT", "notification", now - hour, None, None, 5),
        HeldItem(2, "a", "IMMIGRANT", "notification", now - hour, None, None, 3),
        HeldItem(3, "a", "LABOUR_MARKET_SUBSIDY_300_DAYS", "list", now, None, None, 4),
        HeldItem(4, "a", "IMMIGRANT", "notification", now + timedelta(seconds=1), None, None, 1),
        HeldItem(5, "a", "IMMIGRANT", "notification", now - day, now + day, 1, 2),  # planned
        HeldItem(6, "b", "IMMIGRANT", "notification", now + day, now, 0, 6),  # plan: now
    ]
    got = [(g.organisation, g.kind, g.portion, g.ids) for g in due_groups(items, now)]
    assert got == [("a", "list", None, (3,)), ("a", "notification", None, (2, 1)),
                   ("b", "notification", 0, (6,))]
    assert due_groups(list(reversed(items)), now) == due_groups(items, now)
