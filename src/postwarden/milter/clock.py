"""The warm-up schedule's day (streams.md: UTC days).

Test hook: POSTWARDEN_TODAY=YYYY-MM-DD in the daemon's environment makes that the day for
warm-up (its allowance and its counts), so a test can move to the next schedule day with a
restart instead of waiting for midnight. Unset, it is today's UTC date. Pacing always uses
the real clock.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime

TODAY_ENV = "POSTWARDEN_TODAY"


class BadToday(ValueError):
    pass


def schedule_today(now: datetime) -> date:
    text = os.environ.get(TODAY_ENV, "").strip()
    if text:
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise BadToday(f"{TODAY_ENV}={text!r} is not a date like 2026-12-01") from None
    return now.astimezone(UTC).date()
