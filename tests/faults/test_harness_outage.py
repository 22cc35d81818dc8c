"""Unit tests of the write-outage measure of scripts/faults/harness.py (the
longest time without an acknowledged write around a fault). No root, no binary.

Run: python3 -m pytest tests/faults
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "faults"))
import harness  # noqa: E402


def test_gap_spanning_the_fault_counts_from_the_last_ack_before_it():
    acks = [1.0, 1.1, 1.2, 5.0, 5.1]
    assert harness.longest_gap(acks, 2.0, 4.0, now=9.0) == pytest.approx((3.8, 1.2))


def test_gaps_before_and_after_the_window_are_ignored():
    acks = [0.0, 10.0, 10.1, 10.2, 12.0, 12.1, 30.0]
    # [10.05, 12.05]: the gaps 0-10 and 12.1-30 lie outside it.
    assert harness.longest_gap(acks, 10.05, 12.05, now=31.0) == pytest.approx((1.8, 10.2))


def test_no_ack_since_the_fault_lasts_until_now():
    acks = [1.0, 2.0]
    assert harness.longest_gap(acks, 3.0, 4.0, now=10.0) == pytest.approx((8.0, 2.0))


def test_no_ack_at_all_counts_from_the_window_start():
    assert harness.longest_gap([], 3.0, 4.0, now=10.0) == pytest.approx((7.0, 3.0))


def test_steady_acks_give_a_short_outage():
    acks = [i * 0.01 for i in range(1000)]
    best, _ = harness.longest_gap(acks, 2.0, 8.0, now=10.0)
    assert best == pytest.approx(0.01)
