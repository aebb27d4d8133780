"""The fan-out refuses to start on topics that are not co-partitioned."""

from __future__ import annotations

import pytest

from streams.copartition import NotCopartitionedError, copartitioned_partitions

TOPICS = ("registry", "changes")


def test_same_count() -> None:
    assert copartitioned_partitions({"registry": 6, "changes": 6}, TOPICS) == 6


def test_different_counts_fail_naming_both() -> None:
    with pytest.raises(NotCopartitionedError, match="registry has 6, changes has 3"):
        copartitioned_partitions({"registry": 6, "changes": 3}, TOPICS)


def test_missing_topic_fails() -> None:
    with pytest.raises(NotCopartitionedError, match="missing"):
        copartitioned_partitions({"registry": 6, "changes": None}, TOPICS)
