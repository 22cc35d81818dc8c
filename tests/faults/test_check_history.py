"""Unit tests of scripts/faults/check_history.py on small synthetic histories:
each broken history must fail with the right category, the clean one must pass.

Run: python3 -m pytest tests/faults (needs only pytest, no binary, no root).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "faults"))
import check_history as ch  # noqa: E402


class History:
    """Builds events with increasing timestamps."""

    def __init__(self):
        self.events = []
        self.t = 0.0
        self.op = 0

    def _ev(self, **kw):
        self.t += 0.01
        e = {"t": round(self.t, 3), **kw}
        self.events.append(e)
        return e

    def invoke(self, proc, f, values=(), node="n1", offset=None):
        self.op += 1
        e = {"proc": proc, "op": self.op, "type": "invoke", "f": f, "values": list(values), "node": node}
        if offset is not None:
            e["offset"] = offset
        self._ev(**e)
        return self.op

    def done(self, op, proc, f, typ, **kw):
        self._ev(proc=proc, op=op, type=typ, f=f, **kw)

    def produce(self, proc, value, offset, typ="ok"):
        op = self.invoke(proc, "produce", [value])
        if typ == "ok":
            self.done(op, proc, "produce", "ok", offset=offset)
        else:
            self.done(op, proc, "produce", typ, error="UNAVAILABLE")

    def batch(self, proc, values, offset, typ="ok"):
        op = self.invoke(proc, "batch", values)
        if typ == "ok":
            self.done(op, proc, "batch", "ok", offset=offset,
                      offsets=list(range(offset, offset + len(values))))
        else:
            self.done(op, proc, "batch", typ, error="UNAVAILABLE")

    def read(self, proc, offset, found, value=None, node="n2"):
        op = self.invoke(proc, "read", node=node, offset=offset)
        self.done(op, proc, "read", "ok", found=found, values=[value] if found else [])

    def fault(self, kind):
        self._ev(proc="nemesis", type="info", f="fault", fault=kind, phase="start")
        self._ev(proc="nemesis", type="info", f="fault", fault=kind, phase="end")


def good_history():
    """Three records, a batch of three, an unknown-outcome write that did get
    written, one that did not, a definite failure, a fault and reads."""
    h = History()
    h.produce("p1", "p1-1", 0)
    h.produce("p2", "p2-1", 1)
    h.fault("kill")
    h.batch("p1", ["p1-2", "p1-3", "p1-4"], 2)
    h.produce("p2", "p2-2", 5, typ="info")  # written after all (at 5)
    h.produce("p2", "p2-3", None, typ="info")  # never written
    h.produce("p1", "p1-5", None, typ="fail")  # certainly not written
    h.read("r1", 4, True, "p1-4")
    h.produce("p1", "p1-6", 6)
    h.read("r1", 6, True, "p1-6")
    log = ["p1-1", "p2-1", "p1-2", "p1-3", "p1-4", "p2-2", "p1-6"]
    return h, log


def run(events, dumps, **kw):
    return ch.check(events, dumps, **kw)


def only_failures(report):
    return {c for c, n in report.counts.items() if n}


def test_good_history_passes():
    h, log = good_history()
    r = run(h.events, {"n1": log, "n2": list(log), "n3": list(log)})
    assert not r.failed, r.summary()
    assert only_failures(r) == set()
    assert r.stats["acknowledged"] == 6
    assert r.stats["faults"] == {"kill": 1}
    assert r.stats["indeterminate"] == 2 and r.stats["indeterminate_present"] == 1
    assert r.stats["reads_checked"] == 2
    assert "RESULT: PASS" in r.summary()


def test_lost_record_fails():
    h, log = good_history()
    lossy = [v for v in log if v != "p2-1"]
    r = run(h.events, {"n1": lossy, "n2": lossy, "n3": lossy})
    assert r.failed
    assert r.counts["lost"] == 3  # on each of the three nodes
    assert "p2-1" in r.violations["lost"][0]
    assert "RESULT: FAIL" in r.summary()


def test_lost_tail_record_fails():
    """The last acknowledged record missing everywhere (logs end early)."""
    h, log = good_history()
    short = log[:-1]
    r = run(h.events, {"n1": short, "n2": short, "n3": short})
    assert "lost" in only_failures(r)


def test_duplicate_fails():
    h, log = good_history()
    dup = log + ["p1-1"]
    r = run(h.events, {"n1": dup, "n2": list(dup), "n3": list(dup)})
    assert r.failed and r.counts["duplicated"] == 3


def test_wrong_offset_fails():
    h, log = good_history()
    swapped = list(log)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    r = run(h.events, {"n1": swapped, "n2": list(swapped), "n3": list(swapped)})
    assert r.failed and r.counts["misplaced"] == 6  # two records on three nodes


def test_two_acks_for_one_offset_fail():
    h = History()
    h.produce("p1", "a", 0)
    h.produce("p2", "b", 0)
    r = run(h.events, {"n1": ["a", "b"]})
    assert "misplaced" in only_failures(r)


def test_phantom_record_fails():
    h, log = good_history()
    phantom = log + ["zz-never-produced"]
    r = run(h.events, {"n1": phantom, "n2": list(phantom), "n3": list(phantom)})
    assert r.failed and r.counts["unexpected"] == 3
    assert "never produced" in r.violations["unexpected"][0]


def test_definitely_failed_write_present_fails():
    h, log = good_history()
    bad = log + ["p1-5"]  # its produce answered "fail"
    r = run(h.events, {"n1": bad, "n2": list(bad), "n3": list(bad)})
    assert r.failed and r.counts["unexpected"] == 3


def test_divergent_node_fails():
    h, log = good_history()
    other = list(log)
    other[5] = "p2-3"  # an unknown-outcome write instead of another one
    r = run(h.events, {"n1": log, "n2": list(log), "n3": other})
    assert "divergent" in only_failures(r)
    assert "n3" in r.violations["divergent"][0]


def test_lagging_node_fails_unless_allowed():
    h, log = good_history()
    r = run(h.events, {"n1": log, "n2": list(log), "n3": log[:5]})
    assert "lagging" in only_failures(r) and r.failed
    # With --allow-lag the lag itself is accepted, but the lagging node still
    # misses acknowledged records, which stays a violation.
    r = run(h.events, {"n1": log, "n2": list(log), "n3": log[:5]}, allow_lag=True)
    assert r.failed and "lost" in only_failures(r)


def test_stale_read_fails():
    h = History()
    h.produce("p1", "a", 0)
    h.produce("p1", "b", 1)
    h.read("r1", 1, False)  # OUT_OF_RANGE for an offset acknowledged before the read
    r = run(h.events, {"n1": ["a", "b"], "n2": ["a", "b"]})
    assert r.failed and r.counts["stale_read"] == 1


def test_tolerated_category_is_reported_but_passes():
    h = History()
    h.produce("p1", "a", 0)
    h.produce("p1", "b", 1)
    h.read("r1", 1, False)
    r = run(h.events, {"n1": ["a", "b"], "n2": ["a", "b"]}, tolerate=["stale_read"])
    assert not r.failed and r.counts["stale_read"] == 1
    assert "RESULT: PASS (tolerated: stale_read 1)" in r.summary()
    # Tolerating one category does not hide another.
    r = run(h.events, {"n1": ["a"], "n2": ["a", "b"]}, tolerate=["stale_read"])
    assert r.failed and r.counts["lost"] == 1


def test_tolerating_an_unknown_category_is_an_input_error():
    h = History()
    h.produce("p1", "a", 0)
    with pytest.raises(ch.InputError):
        run(h.events, {"n1": ["a"]}, tolerate=["stale"])


def test_read_concurrent_with_write_may_miss_it():
    """A read that starts before the write is acknowledged may miss it."""
    h = History()
    h.produce("p1", "a", 0)
    w = h.invoke("p1", "produce", ["b"])
    h.read("r1", 1, False)
    h.done(w, "p1", "produce", "ok", offset=1)
    r = run(h.events, {"n1": ["a", "b"]})
    assert not r.failed, r.summary()


def test_read_of_wrong_value_fails():
    h = History()
    h.produce("p1", "a", 0)
    h.read("r1", 0, True, "zz")
    r = run(h.events, {"n1": ["a"]})
    assert "bad_read" in only_failures(r)


def test_partial_batch_fails():
    h = History()
    h.batch("p1", ["a", "b", "c"], 0, typ="info")
    log = ["a", "c"]
    r = run(h.events, {"n1": log})
    assert "batch" in only_failures(r)


def test_batch_not_contiguous_fails():
    h = History()
    h.batch("p1", ["a", "b"], 0, typ="info")
    h.produce("p2", "x", 1, typ="info")
    r = run(h.events, {"n1": ["a", "x", "b"]})
    assert "batch" in only_failures(r)


def test_unknown_outcome_batch_all_or_none_passes():
    h = History()
    h.batch("p1", ["a", "b"], 0, typ="info")
    h.batch("p2", ["c", "d"], 0, typ="info")
    r = run(h.events, {"n1": ["c", "d"]})
    assert not r.failed, r.summary()


def test_corrupt_dump_fails(tmp_path):
    h, log = good_history()
    lines = [{"node": "n1", "first_offset": 0, "next_offset": len(log)}]
    lines += [{"offset": i, "value": v} for i, v in enumerate(log)]
    lines[3] = {"offset": 2, "value_hex": "ff00"}  # not UTF-8
    del lines[5]  # a gap in the offsets
    p = tmp_path / "dump-n1.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{torn\n")
    d = ch.load_dump(p)
    r = run(h.events, {"n1": d})
    assert r.failed and r.counts["corrupt"] >= 3


def test_command_line_exit_codes(tmp_path, capsys):
    h, log = good_history()
    run_dir = tmp_path / "run"
    (run_dir / "dumps").mkdir(parents=True)
    (run_dir / "history.jsonl").write_text("".join(json.dumps(e) + "\n" for e in h.events))

    def write_dump(node, values):
        rows = [{"node": node, "first_offset": 0, "next_offset": len(values)}]
        rows += [{"offset": i, "value": v} for i, v in enumerate(values)]
        (run_dir / "dumps" / f"dump-{node}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))

    for n in ("n1", "n2", "n3"):
        write_dump(n, log)
    assert ch.main([str(run_dir), "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["failed"] is False
    write_dump("n2", log[:2] + log[3:])
    assert ch.main([str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert "RESULT: FAIL" in out and "lost" in out
    assert ch.main([str(tmp_path / "missing")]) == 2


def test_duplicate_invoked_value_is_an_input_error():
    h = History()
    h.produce("p1", "a", 0)
    h.produce("p2", "a", 1)
    with pytest.raises(ch.InputError):
        run(h.events, {"n1": ["a", "a"]})
