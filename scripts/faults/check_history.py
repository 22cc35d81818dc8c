#!/usr/bin/env python3
"""Checks a fault-injection run of sidelog: the client history against every
node's final log.

Usage:
  check_history.py RUN_DIR                   # RUN_DIR/history.jsonl + RUN_DIR/dumps/*.jsonl
                                             # (+ RUN_DIR/dumps/LOG/*.jsonl: named logs)
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
  named logs (harness.py --logs N): an invoke carries "log": "log0" (absent: the default log); its
  completion belongs to the same log (by "op").
Dumps (JSONL, one per node and log): a header {"node": "n1", "first_offset": 0, "next_offset": N}
  (a named log's also "log": "log0") and then {"offset": o, "value": "..."} per record
  ({"offset": o, "value_hex": "..."} if not UTF-8).
Named logs: every log is checked on its own (offsets are per log: dense from 0, acknowledged
  offsets, reads, batches, divergence within that log), and across logs:
  wrong_log   a record is in another log than the one it was written to
  (reported only when the history names logs or a named log was dumped).

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
# Checked only for runs with named logs (--logs N).
LOG_CATEGORIES = ("wrong_log",)
ALL_CATEGORIES = CATEGORIES + LOG_CATEGORIES
DEFAULT_LOG = "default"


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
    log: str = DEFAULT_LOG

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
                if obj.get("log"):
                    d.log = str(obj["log"])
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


def load_dump(path: Path, log: str | None = None) -> Dump:
    """log: the log this dump is of when its header does not say (default: the default log)."""
    lines = read_jsonl(path)
    node = path.stem.removeprefix("dump-")
    d = dump_from_lines(node, [ln for ln in lines if "_bad" not in ln])
    d.corrupt.extend(f"{ln['_bad']}" for ln in lines if "_bad" in ln)
    if log and d.log == DEFAULT_LOG:
        d.log = log
    return d


def group_dumps(dumps) -> dict:
    """log -> {node -> Dump}; two dumps of one node and log are an input error."""
    out: dict = {}
    for d in dumps:
        per = out.setdefault(d.log, {})
        if d.node in per:
            raise InputError(f"two dumps for node {d.node}" + ("" if d.log == DEFAULT_LOG else f" of log {d.log}"))
        per[d.node] = d
    return out


def load_run_dumps(run_dir: Path) -> dict:
    """A run directory's dumps, log -> {node -> Dump}: dumps/*.jsonl (the
    default log) and dumps/LOG/*.jsonl (the named log LOG)."""
    dumps_dir = Path(run_dir) / "dumps"
    dumps = [load_dump(p) for p in sorted(dumps_dir.glob("*.jsonl"))]
    for sub in sorted(p for p in dumps_dir.glob("*") if p.is_dir()):
        dumps += [load_dump(p, log=sub.name) for p in sorted(sub.glob("*.jsonl"))]
    return group_dumps(dumps)


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
    categories: tuple = CATEGORIES  # ALL_CATEGORIES for runs with named logs

    def __post_init__(self):
        for c in self.categories:
            self.violations.setdefault(c, [])
            self.counts.setdefault(c, 0)

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
        for name, ls in sorted(s.get("logs", {}).items()):
            lc = ls["counts"]
            lines.append(f"log {name}: acknowledged {ls['acknowledged']}, lost {lc['lost']}, "
                         f"duplicated {lc['duplicated']}, misplaced {lc['misplaced']}, "
                         f"divergent {lc['divergent']}, unexpected {lc['unexpected']}, "
                         f"wrong_log {lc.get('wrong_log', 0)}, other violations "
                         f"{sum(n for c, n in lc.items() if c not in LOG_SUMMARY_COUNTS)}; "
                         f"reads {ls['reads_checked']} checked; nodes "
                         + (", ".join(f"{n} {c}" for n, c in sorted(ls["nodes"].items())) or "none"))
        lines.append("lost {lost}, duplicated {duplicated}, unexpected {unexpected}, corrupt {corrupt}, "
                     "misplaced {misplaced}, divergent {divergent}, lagging {lagging}, batch {batch}, "
                     "stale_read {stale_read}, bad_read {bad_read}".format(**self.counts)
                     + "".join(f", {c} {self.counts[c]}" for c in self.categories if c not in CATEGORIES))
        for c in self.categories:
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


LOG_SUMMARY_COUNTS = ("lost", "duplicated", "misplaced", "divergent", "unexpected", "wrong_log")


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


def check(events, dumps: dict, allow_lag: bool = False, tolerate=(), foreign: dict | None = None) -> Report:
    """events: history dicts; dumps: node -> Dump (or a list of values from offset 0).
    foreign (named logs): value -> the other log it was written to; such a
    value in these dumps is wrong_log rather than unexpected."""
    unknown = set(tolerate) - set(ALL_CATEGORIES)
    if unknown:
        raise InputError(f"unknown categories to tolerate: {sorted(unknown)} (known: {', '.join(ALL_CATEGORIES)})")
    report = Report(allow_lag=allow_lag, tolerate=frozenset(tolerate),
                    categories=CATEGORIES if foreign is None else ALL_CATEGORIES)
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
            if op is None and foreign and v in foreign:
                report.add("wrong_log", f"{node}: {v!r} at offset {offs[0]} was written to {foreign[v]}")
            elif op is None:
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

    for c in report.categories:
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


def split_by_log(events) -> tuple[dict, dict]:
    """(log -> its events, value -> the log it was written to). An
    operation's completion goes with its invoke (by "op", else the proc's
    last invoke); fault events go to every log."""
    log_of_op: dict = {}
    last_of_proc: dict = {}
    logs: set = set()
    tagged = []  # (event, log or None for every log)
    written_to: dict = {}
    for n, e in enumerate(events):
        f = e.get("f")
        if f not in ("produce", "batch", "read"):
            tagged.append((e, None))
            continue
        proc = str(e.get("proc", "?"))
        if e.get("type") == "invoke":
            log = str(e.get("log") or DEFAULT_LOG)
            log_of_op[e.get("op", (proc, n))] = log
            last_of_proc[proc] = log
            if f != "read":
                for v in e.get("values") or []:
                    if written_to.setdefault(str(v), log) != log:
                        raise InputError(f"value {v!r} invoked in two logs ({written_to[str(v)]} and {log}): "
                                         f"values must be unique")
        else:
            oid = e.get("op")
            log = log_of_op.get(oid) if oid is not None else None
            log = log or (str(e["log"]) if e.get("log") else None) or last_of_proc.get(proc, DEFAULT_LOG)
        logs.add(log)
        tagged.append((e, log))
    out: dict = {log: [] for log in logs}
    for e, log in tagged:
        if log is None:
            for evs in out.values():
                evs.append(e)
        else:
            out[log].append(e)
    return out, written_to


def named_logs_in(events, dumps_by_log: dict) -> bool:
    return any(e.get("log") for e in events) or any(log != DEFAULT_LOG for log in dumps_by_log)


def check_logs(events, dumps_by_log: dict, allow_lag: bool = False, tolerate=()) -> Report:
    """events: the whole history; dumps_by_log: log -> {node -> Dump or values}.
    Without named logs this is check() on the default log's dumps. With
    them, each log is checked on its own (its events and its dumps) and the
    reports are merged (details prefixed with [log]); a record found in
    another log than the one it was written to is wrong_log."""
    if not named_logs_in(events, dumps_by_log):
        return check(events, dumps_by_log.get(DEFAULT_LOG, {}), allow_lag=allow_lag, tolerate=tolerate)
    by_log, written_to = split_by_log(events)
    logs = sorted(set(by_log) | set(dumps_by_log))
    faults_only = [e for e in events if e.get("f") not in ("produce", "batch", "read")]
    total = Report(allow_lag=allow_lag, tolerate=frozenset(tolerate), categories=ALL_CATEGORIES)
    ops: Counter = Counter()
    nodes: Counter = Counter()
    per_log: dict = {}
    sums = Counter()
    faults: dict = {}
    for log in logs:
        evs = by_log.get(log, faults_only)
        dumps = dumps_by_log.get(log, {})
        foreign = {v: w for v, w in written_to.items() if w != log}
        r = check(evs, dumps, allow_lag=allow_lag, tolerate=tolerate, foreign=foreign)
        if not dumps and r.stats["acknowledged"]:
            r.add("lost", f"no node's dump of this log: its {r.stats['acknowledged']} acknowledged records "
                          f"are unchecked")
            r.counts["lost"] = len(r.violations["lost"])
        for c in ALL_CATEGORIES:
            total.violations[c].extend(f"[{log}] {d}" for d in r.violations[c])
        st = r.stats
        ops.update(st["operations"])
        for k in ("ops_ok", "ops_fail", "ops_info", "acknowledged", "indeterminate", "indeterminate_present",
                  "reads_ok", "reads_checked"):
            sums[k] += st[k]
        nodes.update(st["nodes"])
        faults = st["faults"]  # every log sees every fault event
        per_log[log] = {"acknowledged": st["acknowledged"], "indeterminate": st["indeterminate"],
                        "indeterminate_present": st["indeterminate_present"], "operations": st["operations"],
                        "reads_ok": st["reads_ok"], "reads_checked": st["reads_checked"],
                        "nodes": st["nodes"], "counts": dict(r.counts)}
    for c in ALL_CATEGORIES:
        total.counts[c] = len(total.violations[c])
    total.stats = {"operations": dict(ops), **{k: sums[k] for k in (
        "ops_ok", "ops_fail", "ops_info")}, "faults": faults, **{k: sums[k] for k in (
            "acknowledged", "indeterminate", "indeterminate_present", "reads_ok", "reads_checked")},
        "nodes": dict(nodes), "logs": per_log}
    return total


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="RUN_DIR, or HISTORY DUMP [DUMP...] (a named log's dump says "
                                             "its log in its header)")
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
            dumps_by_log = load_run_dumps(first)
        else:
            history = first
            dumps_by_log = group_dumps(load_dump(Path(p)) for p in args.paths[1:])
        if not dumps_by_log:
            raise InputError("no node dumps given")
        events = load_history(history)
        report = check_logs(events, dumps_by_log, allow_lag=args.allow_lag,
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
