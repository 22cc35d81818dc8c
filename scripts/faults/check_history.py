#!/usr/bin/env python3
"""Checks a fault-injection run of sidelog: the client history against every
node's final log.

Usage:
  check_history.py RUN_DIR                   # RUN_DIR/history.jsonl + RUN_DIR/dumps/*.jsonl
  check_history.py HISTORY DUMP [DUMP...]    # explicit files
  options: --json FILE (write the report as JSON), --allow-lag, --tolerate CAT[,CAT],
           --max-details N

History (JSONL, one event a line, written by harness.py):
  {"t": 1.25, "proc": "p3", "op": 17, "type": "invoke", "f": "produce", "values": ["p3-17"], "node": "n2"}
  {"t": 1.31, "proc": "p3", "op": 17, "type": "ok", "f": "produce", "offset": 42}
  type: invoke | ok (acknowledged) | fail (certainly not written) | info (unknown outcome)
  f: produce | batch (ProduceBatch: offset is the first record's) | read
  reads: invoke carries "offset" (the offset asked for, linearizable);
         ok carries "found" (false: OUT_OF_RANGE) and "values" ([the value read])
  faults: {"t":..., "proc": "nemesis", "type": "info", "f": "fault", "fault": "kill", "phase": "start"}
Dumps (JSONL, one per node): a header {"node": "n1", "first_offset": 0, "next_offset": N}
  and then {"offset": o, "value": "..."} per record ({"offset": o, "value_hex": "..."} if not UTF-8).

Checks (each a violation, exit code 1):
  lost        an acknowledged record is missing from a node's log
  misplaced   an acknowledged record is at another offset than acknowledged
              (or two acknowledgements claim the same offset)
  duplicated  a record appears more than once in a node's log
  unexpected  a record that was never produced (never invoked), or whose
              produce failed definitely ("fail"), is in a log
  corrupt     a log's offsets are not dense from its first offset, a value
              is not UTF-8, or a dump line is unreadable
  divergent   two nodes hold different records at the same offset
  lagging     a node's log is shorter than the longest (after heal every
              node must have caught up; --allow-lag reports it only)
  batch       a ProduceBatch's records are partly present, or not at
              consecutive offsets in order
  stale_read  a linearizable read did not see an offset acknowledged before
              the read started (OUT_OF_RANGE)
  bad_read    a read returned another value than the log holds at that offset
--tolerate CAT[,CAT] reports those categories but does not fail on them (for a
known, not yet fixed bug; --allow-lag is --tolerate lagging).
Exit codes: 0 no violation, 1 violations, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

CATEGORIES = (
    "lost", "misplaced", "duplicated", "unexpected", "corrupt", "divergent",
    "lagging", "batch", "stale_read", "bad_read",
)


class InputError(Exception):
    pass


# --------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------

@dataclass
class Dump:
    """One node's log: records[i] is the value at offset first_offset + i
    (None: unreadable). corrupt lists problems found while loading."""
    node: str
    first_offset: int = 0
    records: list = field(default_factory=list)
    corrupt: list = field(default_factory=list)

    @property
    def next_offset(self) -> int:
        return self.first_offset + len(self.records)

    def value_at(self, offset: int):
        i = offset - self.first_offset
        if 0 <= i < len(self.records):
            return self.records[i]
        return None

    def covers(self, offset: int) -> bool:
        return self.first_offset <= offset < self.next_offset


def dump_from_values(node: str, values, first_offset: int = 0) -> Dump:
    """A dump from a plain list of values at first_offset, first_offset+1, ..."""
    return Dump(node=node, first_offset=first_offset, records=list(values))


def dump_from_lines(node: str, lines) -> Dump:
    """A dump from parsed JSONL dicts (header and records, as harness.py writes)."""
    d = Dump(node=node)
    header_first = None
    expected = None
    for n, obj in enumerate(lines, 1):
        if not isinstance(obj, dict):
            d.corrupt.append(f"{node}: line {n}: not an object")
            continue
        if "offset" not in obj:
            if "node" in obj:
                d.node = str(obj["node"])
                header_first = obj.get("first_offset")
                if header_first is not None:
                    d.first_offset = int(header_first)
            continue
        off = obj.get("offset")
        if not isinstance(off, int):
            d.corrupt.append(f"{node}: line {n}: bad offset {off!r}")
            continue
        if expected is None:
            if header_first is None:
                d.first_offset = off
            expected = d.first_offset
        if off != expected:
            d.corrupt.append(f"{d.node}: offset {off} where {expected} was expected (offsets not dense)")
            if off < expected:
                continue  # a record going backwards: skip it
            d.records.extend([None] * (off - expected))  # a gap: unknown values
            expected = off
        if "value" in obj and isinstance(obj["value"], str):
            d.records.append(obj["value"])
        else:
            d.corrupt.append(f"{d.node}: offset {off}: value not UTF-8 ({obj.get('value_hex', '?')[:40]})")
            d.records.append(None)
        expected += 1
    return d


def read_jsonl(path: Path) -> list:
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    out.append({"_bad": f"{path}:{n}: {e}"})
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}") from e
    return out


def load_history(path: Path) -> list:
    events = read_jsonl(path)
    bad = [e["_bad"] for e in events if "_bad" in e]
    if bad:
        # The harness writes whole lines under a lock; a torn last line can
        # only come from a crash while writing. Anything else is unreadable.
        if len(bad) == 1 and "_bad" in events[-1]:
            events = events[:-1]
        else:
            raise InputError(f"unreadable history lines: {bad[:3]}")
    return events


def load_dump(path: Path) -> Dump:
    lines = read_jsonl(path)
    node = path.stem.removeprefix("dump-")
    d = dump_from_lines(node, [ln for ln in lines if "_bad" not in ln])
    d.corrupt.extend(f"{ln['_bad']}" for ln in lines if "_bad" in ln)
    return d


# --------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------

@dataclass
class Op:
    id: object
    proc: str
    f: str
    values: list
    node: str | None
    t_invoke: float
    type: str = "info"  # outcome; an invoke without completion stays "info"
    t_done: float | None = None
    offset: int | None = None  # produce/batch: acknowledged first offset; read: offset asked for
    found: bool | None = None
    read_values: list = field(default_factory=list)
    error: str | None = None


@dataclass
class Report:
    violations: dict = field(default_factory=lambda: {c: [] for c in CATEGORIES})
    counts: dict = field(default_factory=lambda: {c: 0 for c in CATEGORIES})
    stats: dict = field(default_factory=dict)
    allow_lag: bool = False
    tolerate: frozenset = frozenset()

    def tolerated(self, category: str) -> bool:
        return category in self.tolerate or (category == "lagging" and self.allow_lag)

    def add(self, category: str, detail: str) -> None:
        self.violations[category].append(detail)

    @property
    def failed(self) -> bool:
        return any(n for c, n in self.counts.items() if not self.tolerated(c))

    def summary(self, max_details: int = 10) -> str:
        s = self.stats
        lines = ["== sidelog history check =="]
        ops = s.get("operations", {})
        lines.append("operations: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())) +
                     f" (ok {s.get('ops_ok', 0)}, fail {s.get('ops_fail', 0)}, info {s.get('ops_info', 0)})")
        faults = s.get("faults", {})
        lines.append(f"faults: {sum(faults.values())}" +
                     (" (" + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())) + ")" if faults else ""))
        lines.append(f"acknowledged records: {s.get('acknowledged', 0)}; "
                     f"unknown-outcome records: {s.get('indeterminate', 0)} "
                     f"({s.get('indeterminate_present', 0)} written, "
                     f"{s.get('indeterminate', 0) - s.get('indeterminate_present', 0)} not)")
        lines.append(f"linearizable reads: {s.get('reads_ok', 0)} answered, "
                     f"{s.get('reads_checked', 0)} checked against earlier acknowledgements")
        lines.append("nodes: " + ", ".join(f"{n} {c} records" for n, c in sorted(s.get("nodes", {}).items())))
        lines.append("lost {lost}, duplicated {duplicated}, unexpected {unexpected}, corrupt {corrupt}, "
                     "misplaced {misplaced}, divergent {divergent}, lagging {lagging}, batch {batch}, "
                     "stale_read {stale_read}, bad_read {bad_read}".format(**self.counts))
        for c in CATEGORIES:
            v = self.violations[c]
            if not v:
                continue
            lines.append(f"-- {c} ({len(v)}):")
            lines.extend(f"   {d}" for d in v[:max_details])
            if len(v) > max_details:
                lines.append(f"   ... {len(v) - max_details} more")
        tolerated = [f"{c} {n}" for c, n in self.counts.items() if n and self.tolerated(c)]
        if self.failed:
            lines.append("RESULT: FAIL")
        elif tolerated:
            lines.append(f"RESULT: PASS (tolerated: {', '.join(tolerated)})")
        else:
            lines.append("RESULT: PASS")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"failed": self.failed, "counts": self.counts, "tolerated": sorted(self.tolerate), "stats": self.stats,
                "violations": {c: v[:1000] for c, v in self.violations.items()}}


def parse_ops(events, report: Report) -> tuple[list, Counter]:
    """Pairs invokes with their completions (by "op" id, else by proc)."""
    ops: dict = {}
    order: list = []
    pending_by_proc: dict = {}
    faults: Counter = Counter()
    for n, e in enumerate(events):
        f = e.get("f")
        typ = e.get("type")
        if f == "fault":
            if e.get("phase", "start") == "start":
                faults[str(e.get("fault", "?"))] += 1
            continue
        if f not in ("produce", "batch", "read"):
            continue
        proc = str(e.get("proc", "?"))
        t = float(e.get("t", n))
        if typ == "invoke":
            oid = e.get("op", (proc, n))
            if oid in ops:
                raise InputError(f"op {oid!r} invoked twice")
            op = Op(id=oid, proc=proc, f=f, values=[str(v) for v in e.get("values") or []],
                    node=e.get("node"), t_invoke=t, offset=e.get("offset"))
            op.type = "pending"
            ops[oid] = op
            order.append(op)
            pending_by_proc[proc] = op
        elif typ in ("ok", "fail", "info"):
            oid = e.get("op")
            op = ops.get(oid) if oid is not None else pending_by_proc.get(proc)
            if op is None or op.type != "pending":
                raise InputError(f"completion without a pending invoke: {e}")
            pending_by_proc.pop(proc, None)
            op.type = typ
            op.t_done = t
            op.error = e.get("error")
            if op.f == "read":
                op.found = e.get("found")
                op.read_values = [str(v) for v in e.get("values") or []]
            elif typ == "ok":
                if not isinstance(e.get("offset"), int):
                    raise InputError(f"acknowledged write without an offset: {e}")
                op.offset = e["offset"]
                offsets = e.get("offsets")
                if offsets is not None and list(offsets) != list(range(op.offset, op.offset + len(op.values))):
                    report.add("batch", f"op {op.id}: acknowledged offsets {offsets} are not consecutive")
        else:
            raise InputError(f"unknown event type {typ!r}: {e}")
    for op in order:
        if op.type == "pending":
            op.type = "info"  # never completed: unknown outcome
    return order, faults


def check(events, dumps: dict, allow_lag: bool = False, tolerate=()) -> Report:
    """events: history dicts; dumps: node -> Dump (or a list of values from offset 0)."""
    unknown = set(tolerate) - set(CATEGORIES)
    if unknown:
        raise InputError(f"unknown categories to tolerate: {sorted(unknown)} (known: {', '.join(CATEGORIES)})")
    report = Report(allow_lag=allow_lag, tolerate=frozenset(tolerate))
    dumps = {n: (d if isinstance(d, Dump) else dump_from_values(n, d)) for n, d in dumps.items()}
    ops, faults = parse_ops(events, report)

    writes = [o for o in ops if o.f in ("produce", "batch")]
    reads = [o for o in ops if o.f == "read"]
    invoked: dict = {}
    for o in writes:
        for v in o.values:
            if v in invoked:
                raise InputError(f"value {v!r} invoked twice (ops {invoked[v].id} and {o.id}): values must be unique")
            invoked[v] = o

    # Acknowledged records: value -> offset; offset -> value.
    acked: dict = {}
    acked_at: dict = {}
    for o in writes:
        if o.type != "ok":
            continue
        for i, v in enumerate(o.values):
            off = o.offset + i
            acked[v] = off
            if off in acked_at and acked_at[off] != v:
                report.add("misplaced", f"offset {off} acknowledged twice: {acked_at[off]!r} and {v!r}")
            acked_at[off] = v

    # Per-node checks.
    present_anywhere: set = set()
    for node, d in sorted(dumps.items()):
        for c in d.corrupt:
            report.add("corrupt", c)
        where: dict = defaultdict(list)
        for i, v in enumerate(d.records):
            if v is not None:
                where[v].append(d.first_offset + i)
        present_anywhere.update(where)
        for v, offs in where.items():
            if len(offs) > 1:
                report.add("duplicated", f"{node}: {v!r} at offsets {offs}")
            op = invoked.get(v)
            if op is None:
                report.add("unexpected", f"{node}: {v!r} at offset {offs[0]} was never produced")
            elif op.type == "fail":
                report.add("unexpected", f"{node}: {v!r} at offset {offs[0]} belongs to op {op.id}, "
                                         f"which failed definitely ({op.error})")
        for v, off in acked.items():
            if off < d.first_offset:
                continue  # below this node's first offset (retention): cannot check
            offs = where.get(v)
            if not offs:
                report.add("lost", f"{node}: {v!r} acknowledged at offset {off} is missing"
                           + ("" if d.covers(off) else f" (log ends at {d.next_offset})"))
            elif off not in offs:
                report.add("misplaced", f"{node}: {v!r} acknowledged at offset {off} is at {offs}")
        for o in writes:
            if o.f != "batch" or len(o.values) < 2:
                continue
            pos = [where.get(v) for v in o.values]
            if all(p is None for p in pos):
                continue
            if any(p is None for p in pos):
                if o.type == "ok" and o.offset < d.first_offset:
                    continue  # its head is below this node's first offset (retention)
                have = sum(p is not None for p in pos)
                report.add("batch", f"{node}: batch op {o.id} ({o.type}) partly written: "
                                    f"{have} of {len(o.values)} records")
                continue
            firsts = [p[0] for p in pos]
            if firsts != list(range(firsts[0], firsts[0] + len(firsts))):
                report.add("batch", f"{node}: batch op {o.id} not at consecutive offsets: {firsts}")

    # Cross-node: every node holds the same records in the same order.
    ref = max(dumps.values(), key=lambda d: (d.next_offset, d.node), default=None)
    if ref is not None:
        for node, d in sorted(dumps.items()):
            if d is ref:
                continue
            start = max(d.first_offset, ref.first_offset)
            mismatches = [o for o in range(start, d.next_offset) if d.value_at(o) != ref.value_at(o)]
            if mismatches:
                o = mismatches[0]
                report.add("divergent", f"{node} differs from {ref.node} at {len(mismatches)} offsets, first "
                                        f"{o}: {d.value_at(o)!r} vs {ref.value_at(o)!r}")
            if d.next_offset < ref.next_offset:
                report.add("lagging", f"{node} ends at offset {d.next_offset}, {ref.node} at {ref.next_offset}")

    # Linearizable reads: never less than a write acknowledged before the read started.
    acks = sorted((o.t_done, o.offset + len(o.values) - 1) for o in writes if o.type == "ok")
    ack_times = [a[0] for a in acks]
    prefix_max = []
    m = -1
    for _, off in acks:
        m = max(m, off)
        prefix_max.append(m)
    reads_ok = reads_checked = 0
    for r in reads:
        if r.type != "ok":
            continue
        reads_ok += 1
        k = bisect.bisect_left(ack_times, r.t_invoke)  # acks strictly before the invoke
        highest = prefix_max[k - 1] if k else -1
        asked = r.offset if isinstance(r.offset, int) else highest
        if asked <= highest:
            reads_checked += 1
            if not r.found:
                report.add("stale_read", f"read op {r.id} on {r.node} at t={r.t_invoke:.3f}: offset {asked} "
                                         f"not visible, but offset {highest} was acknowledged before it started")
        if r.found and r.read_values and ref is not None and ref.covers(asked):
            if ref.value_at(asked) != r.read_values[0]:
                report.add("bad_read", f"read op {r.id} on {r.node}: offset {asked} read "
                                       f"{r.read_values[0]!r}, the log holds {ref.value_at(asked)!r}")
        elif r.found and r.read_values and asked in acked_at and acked_at[asked] != r.read_values[0]:
            report.add("bad_read", f"read op {r.id}: offset {asked} read {r.read_values[0]!r}, "
                                   f"acknowledged {acked_at[asked]!r}")

    for c in CATEGORIES:
        report.counts[c] = len(report.violations[c])
    indeterminate = [v for o in writes if o.type == "info" for v in o.values]
    report.stats = {
        "operations": dict(Counter(o.f for o in ops)),
        "ops_ok": sum(o.type == "ok" for o in ops),
        "ops_fail": sum(o.type == "fail" for o in ops),
        "ops_info": sum(o.type == "info" for o in ops),
        "faults": dict(faults),
        "acknowledged": len(acked),
        "indeterminate": len(indeterminate),
        "indeterminate_present": sum(v in present_anywhere for v in indeterminate),
        "reads_ok": reads_ok,
        "reads_checked": reads_checked,
        "nodes": {n: len(d.records) for n, d in dumps.items()},
    }
    return report


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="RUN_DIR, or HISTORY DUMP [DUMP...]")
    ap.add_argument("--json", help="also write the report as JSON to this file")
    ap.add_argument("--allow-lag", action="store_true", help="a node shorter than the longest is not a violation")
    ap.add_argument("--tolerate", default="", help="comma-separated categories reported without failing")
    ap.add_argument("--max-details", type=int, default=10)
    args = ap.parse_args(argv)
    try:
        first = Path(args.paths[0])
        if first.is_dir():
            if len(args.paths) != 1:
                raise InputError("give one RUN_DIR, or HISTORY and DUMP files")
            history = first / "history.jsonl"
            dump_paths = sorted((first / "dumps").glob("*.jsonl"))
        else:
            history = first
            dump_paths = [Path(p) for p in args.paths[1:]]
        if not dump_paths:
            raise InputError("no node dumps given")
        events = load_history(history)
        dumps = {}
        for p in dump_paths:
            d = load_dump(p)
            if d.node in dumps:
                raise InputError(f"two dumps for node {d.node}")
            dumps[d.node] = d
        report = check(events, dumps, allow_lag=args.allow_lag,
                       tolerate=[c.strip() for c in args.tolerate.split(",") if c.strip()])
    except InputError as e:
        print(f"check_history: {e}", file=sys.stderr)
        return 2
    print(report.summary(args.max_details))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=1))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
