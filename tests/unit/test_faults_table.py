"""`make faults`'s table (tools/faults.py): the latest row of each scenario, with each kill's
duplicates beside what the runtime may repeat for it."""

from __future__ import annotations

from tools.faults import table


def test_a_row_shows_each_kill_and_rows_without_kills_a_dash() -> None:
    rows: list[dict[str, object]] = [
        {"scenario": "kill", "messages": 4000, "lost": 0, "duplicates": 999, "recovery_s": None},
        {
            "scenario": "kill",
            "messages": 4000,
            "lost": 0,
            "duplicates": 40,
            "recovery_s": None,
            "per_kill": [[12, 4, 12], [28, 4, 30]],
        },
        {"scenario": "hang", "messages": 10, "lost": 0, "duplicates": 0, "recovery_s": 6.3},
    ]
    lines = table(rows).splitlines()
    assert lines[2] == "| kill | 4,000 | 0 | 40 | 12 (4 + 12), 28 (4 + 30) | - |"
    assert lines[3] == "| hang | 10 | 0 | 0 | - | 6.3 |"
