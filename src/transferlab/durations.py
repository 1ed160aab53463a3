"""Durations as people write them: "25m", "1h30m", "90s" (a study's time budget)."""
from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?"
                       r"\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_budget(text: str) -> float:
    """Seconds in a duration such as "25m", "1h30m", "90s" or "1h 5m 30s"."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None or not any(m.groups()):
        raise ValueError(f"budget {text!r} is not a duration: write hours, minutes and seconds "
                         "with their units, e.g. \"25m\", \"1h30m\" or \"90s\"")
    h, mins, s = (float(g) if g else 0.0 for g in m.groups())
    seconds = 3600 * h + 60 * mins + s
    if seconds <= 0:
        raise ValueError(f"budget {text!r} is no time at all: give a positive duration")
    return seconds


def duration_text(seconds: float) -> str:
    """A short reading of a duration: "45 s", "12.5 min", "1 h 30 min"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    h, rest = divmod(round(seconds / 60), 60)
    return f"{h} h {rest} min"
