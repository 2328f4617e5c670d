"""The site's weekly comfort periods, written the way a programmable thermostat shows them:
`"mon-fri 06:00-22:00"`, `"sat,sun 08:00-23:00"`, `"daily 17:00-21:00"`.

Why this syntax: it is what people already read on a thermostat's program and in Home
Assistant's schedule helper (days, then a from-to block), it fits one TOML string per period,
and a regular expression can check it when the config is loaded. A period whose end is earlier
than its start runs past midnight into the next day (`"fri 22:00-01:00"`); `24:00` ends a day.
Outside every comfort period the schedule says eco.
"""

import dataclasses
import datetime
import re

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60

_DAY = "(?:" + "|".join(DAYS) + ")"
_DAY_ITEM = f"{_DAY}(?:-{_DAY})?"
_CLOCK = r"(?:[01]\d|2[0-3]):[0-5]\d"
PERIOD_PATTERN = (rf"(?:daily|{_DAY_ITEM}(?:,{_DAY_ITEM})*) (?P<start>{_CLOCK})-"
                  rf"(?!(?P=start)$)(?:{_CLOCK}|24:00)")
"""A comfort period: days (`daily`, `mon`, `mon-fri`, `sat,sun`, `fri-mon`), a space, then
`HH:MM-HH:MM`; start and end differ."""
WEEKLY_TIME_PATTERN = rf"{_DAY} {_CLOCK}"
"""One moment of the week, such as `sun 02:00`."""


@dataclasses.dataclass(frozen=True)
class Period:
    """One comfort block on one weekday (0 = Monday), in minutes from that day's midnight; the
    end may pass 1440 for a block that runs past midnight."""

    weekday: int
    start_min: int
    end_min: int


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _days(spec: str) -> list[int]:
    if spec == "daily":
        return list(range(7))
    days: list[int] = []
    for item in spec.split(","):
        first, _, last = item.partition("-")
        start = DAYS.index(first)
        span = (DAYS.index(last) - start) % 7 if last else 0
        days.extend((start + offset) % 7 for offset in range(span + 1))
    return days


def parse_periods(texts: tuple[str, ...]) -> tuple[Period, ...]:
    """Comfort periods from their text; ValueError naming the text and the syntax when one does
    not fit (the config loader has already checked the pattern, so only direct callers see it)."""
    periods = []
    for text in texts:
        if not re.fullmatch(PERIOD_PATTERN, text):
            raise ValueError(f"comfort period {text!r}: expected days and a time block like "
                             "'mon-fri 06:00-22:00'")
        days, _, block = text.partition(" ")
        start, _, end = block.partition("-")
        start_min, end_min = _minutes(start), _minutes(end)
        if end_min <= start_min:
            end_min += MINUTES_PER_DAY
        periods.extend(Period(day, start_min, end_min) for day in _days(days))
    return tuple(periods)


def parse_weekly_time(text: str) -> tuple[int, int]:
    """`"sun 02:00"` -> (weekday with 0 = Monday, minutes after midnight)."""
    if not re.fullmatch(WEEKLY_TIME_PATTERN, text):
        raise ValueError(f"weekly time {text!r}: expected a day and a time like 'sun 02:00'")
    day, _, clock = text.partition(" ")
    return DAYS.index(day), _minutes(clock)


def in_comfort(periods: tuple[Period, ...], local: datetime.datetime) -> bool:
    """Whether the local wall time falls in a comfort period (today's, or yesterday's that runs
    past midnight)."""
    minute = local.hour * 60 + local.minute
    today = local.weekday()
    yesterday = (today - 1) % 7
    return any((p.weekday == today and p.start_min <= minute < p.end_min) or
               (p.weekday == yesterday and minute + MINUTES_PER_DAY < p.end_min)
               for p in periods)
