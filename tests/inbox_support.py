"""What the inbox's integration and fault tests share."""

from __future__ import annotations

from tests.support import committed, end_offsets, wait_until


def committed_to_the_end(
    bootstrap: str, group: str, topic: str, partitions: int, timeout: float
) -> None:
    """Wait until the group committed every partition of `topic` to the end of its log."""
    wait_until(
        lambda: (
            committed(bootstrap, group, topic, partitions)
            == end_offsets(bootstrap, topic, partitions)
        ),
        timeout,
        "the group committed to the end of the log",
        0.5,
    )
