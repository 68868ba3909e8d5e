"""`make faults`: the fault suite's table from the rows its tests wrote (tests/support.py
report_fault): scenario, messages, lost, duplicates, duplicates per kill, recovery. Printed,
and saved as build/faults.md for docs/reliability.md."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "build" / "faults.jsonl"
TABLE = ROOT / "build" / "faults.md"


def table(rows: list[dict[str, object]]) -> str:
    """The latest row of each scenario, as a Markdown table."""
    latest = {str(row["scenario"]): row for row in rows}
    lines = [
        "| scenario | messages | lost | duplicates | per kill: duplicates (in flight + finished"
        " since the last commit) | recovery (s) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, row in latest.items():
        recovery = row["recovery_s"]
        lines.append(
            f"| {name} | {row['messages']:,} | {row['lost']} | {row['duplicates']:,} | "
            f"{per_kill(row.get('per_kill'))} | {'-' if recovery is None else recovery} |"
        )
    return "\n".join(lines)


def per_kill(kills: object) -> str:
    """Each kill's duplicates, and what the runtime may repeat for it: the messages in flight
    and those finished since the last commit ("12 (4 + 9)")."""
    if not isinstance(kills, list) or not kills:
        return "-"
    return ", ".join(
        f"{again:,} ({in_flight} + {uncommitted:,})" for again, in_flight, uncommitted in kills
    )


def main() -> int:
    if not REPORT.exists():
        print(f"no fault rows in {REPORT}: run the fault tests first (make faults)")
        return 1
    rows = [json.loads(line) for line in REPORT.read_text().splitlines() if line.strip()]
    text = table(rows)
    TABLE.write_text(text + "\n")
    print(text)
    print(f"\nsaved to {TABLE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
