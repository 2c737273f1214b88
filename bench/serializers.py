"""What Celery's serializers cost: encoded size, encode and decode time, and peak memory (issue 7).

    .venv/bin/python bench/serializers.py [--rounds 3] [--scale 1.0] [--yaml-fraction 0.01] [--only NAME,...]

Everything goes through kombu's serializer registry (``kombu.serialization.dumps``
and ``loads`` with ``accept=``), the code Celery runs when it publishes a task
or stores a result, under the names Celery uses: ``json`` (Celery's default,
with kombu's encoder for datetime, date, time, UUID, Decimal and bytes),
``msgpack``, ``pickle`` (kombu's protocol 4) and ``yaml`` (``yaml.safe_dump`` and
``safe_load``).  "Encode" is ``dumps`` plus turning a text payload into the bytes
that go on the wire; "decode" is ``loads`` from those bytes, as a worker or a
result consumer receives them.  What the transport adds (Redis wraps the body
in base64 inside a JSON envelope) is not counted.

Payloads (``--scale`` multiplies the sizes):

* ``task call``: the body Celery builds for one task call with a few arguments
  (``app.amqp.as_task_v2``); time per message, averaged over 20,000 messages.
* ``records``: 100,000 dicts of ints, floats, short strings and a UTC datetime.
* ``records, ISO dates``: the same with the datetime as an ISO string (what
  msgpack users have to send).
* ``5M floats``: a list of 5,000,000 floats (``array.tolist()``).
* ``numpy array``: the same 5,000,000 floats as an ``ndarray``.
* ``DataFrame ...``: a frame of 1,000,000 rows (id, country, qty, price, score,
  created_at), sent the ways people send one: the frame itself,
  ``df.to_dict("records")``, ``df.to_json()`` and Parquet bytes.  Their times
  include the conversion and the rebuild of a frame on the other side
  (``pd.DataFrame(records)``, ``pd.read_json``, ``pd.read_parquet``), which the
  second table shows on their own.

Each figure comes from a fresh subprocess: it builds the payload (the decode
side reads the encoded bytes from a file), warms the code path on a tiny
payload, resets its peak RSS (``/proc/self/clear_refs``), takes its RSS as the
baseline, runs the one operation, and reports the time and ``VmHWM`` minus the
baseline.  Rounds alternate; the table shows medians.

yaml (pure Python in PyYAML's ``safe_dump``/``safe_load``) needs minutes per
round on the large payloads (10,000 records: 7 s to encode, 20 s to decode), so
on every payload but the task call it runs on ``--yaml-fraction`` of the
payload and its figures are scaled up linearly, marked with ``≈``.  A
subprocess that runs longer than ``--timeout`` seconds is reported as
``> N s``.

Every round trip is checked once, outside the timed runs: a serializer that
changes the data (tuple to list, Timestamp to datetime, a dtype of a rebuilt
frame) is reported in the "round trip" column; a changed *value* is printed in
capitals and warned about on stderr.  A payload a serializer refuses is
reported with kombu's error.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERIALIZERS = ("json", "msgpack", "pickle", "yaml")
MiB = 2**20
SMALL_REPEAT = 20_000


# --- payloads ---------------------------------------------------------------------------------------------------


def _records(n: int, iso: bool = False) -> list[dict]:
    import datetime as dt
    import random

    rng = random.Random(7)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    countries = ("DE", "FR", "US", "JP", "BR", "IN")
    rows = []
    for i in range(n):
        created = start + dt.timedelta(seconds=i * 7)
        rows.append({
            "id": i,
            "user": f"u{rng.randrange(10**6):06d}",
            "country": rng.choice(countries),
            "qty": rng.randrange(100),
            "price": round(rng.uniform(0, 1000), 2),
            "score": rng.random(),
            "created": created.isoformat() if iso else created,
        })
    return rows


def _floats(n: int) -> Any:
    import numpy as np

    return np.random.default_rng(1).random(n)


def _frame(n: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(3)
    return pd.DataFrame({
        "id": np.arange(n, dtype="int64"),
        "country": rng.choice(np.array(["DE", "FR", "US", "JP", "BR", "IN"], dtype=object), n),
        "qty": rng.integers(0, 100, n),
        "price": np.round(rng.uniform(0, 1000, n), 2),
        "score": rng.random(n),
        "created_at": pd.date_range("2026-01-01", periods=n, freq="7s", tz="UTC"),
    })


def _task_call(_: int) -> Any:
    """The body (args, kwargs, embed) Celery publishes for ``etl.load.delay(...)``."""
    from celery import Celery

    app = Celery("bench", set_as_current=False)
    message = app.amqp.as_task_v2(
        "6f1c2a0e-3b7d-4c55-9a51-0d2e7f9b8c41", "etl.load",
        args=("s3://bucket/2026/01/orders.csv", 42),
        kwargs={"run_date": "2026-01-02", "dry_run": False, "columns": ["id", "price", "qty"]},
    )
    return message.body


def _identity(x: Any) -> Any:
    return x


def _to_records(df: Any) -> Any:
    return df.to_dict("records")


def _from_records(records: Any) -> Any:
    import pandas as pd

    return pd.DataFrame(records)


def _to_json(df: Any) -> Any:
    return df.to_json()


def _from_json(text: Any) -> Any:
    import io

    import pandas as pd

    return pd.read_json(io.StringIO(text))


def _to_parquet(df: Any) -> Any:
    return df.to_parquet(engine="pyarrow")


def _from_parquet(blob: Any) -> Any:
    import io

    import pandas as pd

    return pd.read_parquet(io.BytesIO(blob), engine="pyarrow")


@dataclass(frozen=True)
class Payload:
    """One thing to send: how to build it at full size, and how it is turned into what ``dumps`` gets and back."""

    name: str
    size: int  # rows, items or messages at --scale 1
    build: Callable[[int], Any]
    prepare: Callable[[Any], Any] = _identity  # before dumps (timed with encode)
    rebuild: Callable[[Any], Any] = _identity  # after loads (timed with decode)
    prepare_name: str = ""
    rebuild_name: str = ""
    repeat: int = 1  # the operation runs this often; times are per run
    yaml_scaled: bool = True


PAYLOADS = [
    Payload("task call", 1, _task_call, repeat=SMALL_REPEAT, yaml_scaled=False),
    Payload("records", 100_000, _records),
    Payload("records, ISO dates", 100_000, lambda n: _records(n, iso=True)),
    Payload("5M floats (list)", 5_000_000, lambda n: _floats(n).tolist()),
    Payload("numpy array", 5_000_000, _floats),
    Payload("DataFrame itself", 1_000_000, _frame),
    Payload("DataFrame to_dict('records')", 1_000_000, _frame, _to_records, _from_records,
            "df.to_dict('records')", "pd.DataFrame(records)"),
    Payload("DataFrame to_json()", 1_000_000, _frame, _to_json, _from_json, "df.to_json()", "pd.read_json(...)"),
    Payload("DataFrame Parquet bytes", 1_000_000, _frame, _to_parquet, _from_parquet,
            "df.to_parquet()", "pd.read_parquet(...)"),
]
BY_NAME = {p.name: p for p in PAYLOADS}


# --- round-trip comparison -------------------------------------------------------------------------------------


def _type_name(x: Any) -> str:
    return type(x).__name__


def _frame_changes(sent: Any, got: Any) -> list[str]:
    import pandas as pd

    if not isinstance(got, pd.DataFrame):
        return [f"DataFrame→{_type_name(got)}"]
    found = []
    if list(sent.columns) != list(got.columns):
        found.append(f"columns {list(sent.columns)}→{list(got.columns)}")
    for col in sent.columns:
        if col not in got.columns:
            continue
        if sent[col].dtype != got[col].dtype:
            found.append(f"{col}: {sent[col].dtype}→{got[col].dtype}")
        elif not sent[col].equals(got[col]):
            if sent[col].dtype.kind == "f":
                error = float((sent[col] - got[col]).abs().max())
                found.append(f"{col}: FLOATS CHANGED (max error {error:.1e})")
            else:
                found.append(f"{col}: VALUES CHANGED")
    if not sent.index.equals(got.index):
        found.append("index changed")
    return found


def changes(sent: Any, got: Any) -> list[str]:
    """What a round trip changed, as short phrases ("tuple→list"); empty when ``got`` is ``sent`` exactly."""
    import numpy as np
    import pandas as pd

    found: dict[str, None] = {}

    def walk(a: Any, b: Any) -> None:
        if isinstance(a, pd.DataFrame):
            found.update(dict.fromkeys(_frame_changes(a, b)))
            return
        if isinstance(a, np.ndarray):
            if not isinstance(b, np.ndarray) or a.dtype != b.dtype:
                found[f"ndarray→{_type_name(b)}"] = None
            elif not np.array_equal(a, b):
                found["ndarray VALUES CHANGED"] = None
            return
        if type(a) is not type(b):
            found[f"{_type_name(a)}→{_type_name(b)}"] = None
            if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
                # a value that kept its kind (int→float, Timestamp→datetime) must still be equal
                if _same_kind(a, b) and a != b:
                    found[f"{_type_name(a)} VALUE CHANGED"] = None
                return
        if isinstance(a, dict):
            if a.keys() != b.keys():
                found["dict KEYS CHANGED"] = None
            elif list(a) != list(b):
                found["dict key order changed"] = None
            for key in a.keys() & b.keys():
                walk(a[key], b[key])
        elif isinstance(a, (list, tuple)):
            if len(a) != len(b):
                found["LENGTH CHANGED"] = None
            if a and all(type(x) is float for x in a) and type(a) is type(b):
                # a long list of floats: one comparison in C instead of millions of calls
                if a != b or not all(type(x) is float for x in b):
                    found["float VALUES CHANGED"] = None
                return
            for x, y in zip(a, b, strict=False):  # a length change is reported above
                walk(x, y)
        elif a != b and not (isinstance(a, float) and math.isnan(a) and math.isnan(b)):
            found[f"{_type_name(a)} VALUE CHANGED"] = None

    walk(sent, got)
    return list(found)


def _same_kind(a: Any, b: Any) -> bool:
    import datetime as dt
    import numbers

    kinds = (numbers.Number, dt.datetime, dt.date, str, bytes)
    return any(isinstance(a, k) and isinstance(b, k) for k in kinds)


# --- the child: one operation in a fresh process --------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M).group(1))  # type: ignore[union-attr]


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _encode(obj: Any, serializer: str) -> tuple[str, str, bytes]:
    from kombu.serialization import dumps

    content_type, encoding, body = dumps(obj, serializer=serializer)
    if isinstance(body, str):  # what the producer does before the transport sees it
        body = body.encode(encoding)
    return content_type, encoding, body


def _decode(body: bytes, content_type: str, encoding: str) -> Any:
    from kombu.serialization import loads

    # accept= as a worker with accept_content=[serializer] passes it (pickle is refused otherwise)
    return loads(body, content_type, encoding, accept={content_type})


def _error(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if type(cause).__name__ == "RepresenterError" and len(cause.args) == 2:  # yaml: args = (text, the object)
        return f"{type(exc).__name__}: {cause.args[0]} of type {_type_name(cause.args[1])}"
    text = f"{type(exc).__name__}: {exc}"
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text.replace("\n", " ")[:160]


def child(job: dict) -> dict:
    """Run one job (prep, encode or decode) and return its figures."""
    import kombu.serialization  # noqa: F401  (registers the serializers before the baseline)
    import numpy  # noqa: F401
    import pandas  # noqa: F401

    # df.to_json() as people call it, without pandas 3's warning about its future date format on stderr
    warnings.filterwarnings("ignore", message=".*default formatting of datetime")
    payload = BY_NAME[job["payload"]]
    serializer, n, path = job["serializer"], max(1, round(job["size"])), Path(job["file"])
    meta = path.with_suffix(".json")

    if job["op"] == "prep":
        original = payload.build(n)
        sent = payload.prepare(original)
        try:
            content_type, encoding, body = _encode(sent, serializer)
        except Exception as exc:
            return {"encode_error": _error(exc)}
        path.write_bytes(body)
        meta.write_text(json.dumps({"content_type": content_type, "encoding": encoding}))
        try:
            got = _decode(body, content_type, encoding)
        except Exception as exc:
            return {"size": len(body), "decode_error": _error(exc)}
        found = changes(sent, got)
        if payload.rebuild is not _identity:
            found += [f"frame: {c}" for c in changes(original, payload.rebuild(got))]
        return {"size": len(body), "changes": found}

    # Warm the code path (lazy imports, first-call costs) on a tiny payload first.
    tiny = payload.prepare(payload.build(min(n, 10)))
    ct, enc, tiny_body = _encode(tiny, serializer)
    payload.rebuild(_decode(tiny_body, ct, enc))
    del tiny, tiny_body

    if job["op"] == "encode":
        original = payload.build(n)
        body = None
        gc.collect()
        resettable = _reset_peak()
        base = _status_kib("VmRSS")
        count, t0 = 0, time.perf_counter()
        while _again(count, t0, payload.repeat):
            sent = payload.prepare(original)
            t1 = time.perf_counter()
            body = _encode(sent, serializer)[2]
            count += 1
        t2 = time.perf_counter()
        peak = _status_kib("VmHWM") - base
        return {"time": (t2 - t0) / count, "convert": (t1 - t0) if count == 1 else 0.0,
                "peak": peak * 1024, "resettable": resettable, "runs": count}

    info = json.loads(meta.read_text())
    body = path.read_bytes()
    gc.collect()
    resettable = _reset_peak()
    base = _status_kib("VmRSS")
    count, t0 = 0, time.perf_counter()
    while _again(count, t0, payload.repeat):
        got = _decode(body, info["content_type"], info["encoding"])
        t1 = time.perf_counter()
        payload.rebuild(got)
        count += 1
    t2 = time.perf_counter()
    peak = _status_kib("VmHWM") - base
    return {"time": (t2 - t0) / count, "convert": (t2 - t1) if count == 1 else 0.0,
            "peak": peak * 1024, "resettable": resettable, "runs": count}


def _again(count: int, start: float, repeat: int) -> bool:
    """Whether to run once more: ``repeat`` times, or at least 100 times and one second (yaml's small messages)."""
    if count == 0:
        return True
    return count < repeat and (count < 100 or time.perf_counter() - start < 1.0)


# --- the parent: schedule, collect, print ----------------------------------------------------------------------


def run_child(job: dict, timeout: float) -> dict:
    try:
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if done.returncode != 0:
        raise RuntimeError(f"{job} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class Cell:
    """One payload × serializer: what the prep run found and the timed runs measured."""

    payload: Payload
    serializer: str
    factor: float  # figures are multiplied by this (yaml on a fraction of the payload)
    prep: dict = field(default_factory=dict)
    encode: list[dict] = field(default_factory=list)
    decode: list[dict] = field(default_factory=list)

    def median(self, op: str, key: str) -> float | None:
        runs = [r[key] for r in getattr(self, op) if key in r]
        return None if not runs else statistics.median(runs) * self.factor

    def timed_out(self, op: str) -> float | None:
        return next((r["timeout"] for r in getattr(self, op) if "timeout" in r), None)


def fmt_time(seconds: float | None, approx: bool = False) -> str:
    if seconds is None:
        return "—"
    mark = "≈ " if approx else ""
    if seconds < 1e-3:
        return f"{mark}{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{mark}{seconds * 1e3:.0f} ms"
    return f"{mark}{seconds:.1f} s" if seconds < 100 else f"{mark}{seconds:.0f} s"


def fmt_bytes(n: float | None, approx: bool = False) -> str:
    if n is None:
        return "—"
    mark = "≈ " if approx else ""
    if n < 10_000:
        return f"{mark}{n:.0f} B"
    if n < MiB:
        return f"{mark}{n / 1024:.0f} KiB"
    return f"{mark}{n / MiB:.0f} MiB" if n >= 10 * MiB else f"{mark}{n / MiB:.1f} MiB"


def round_trip(cell: Cell) -> str:
    prep = cell.prep
    if "timeout" in prep:
        return f"> {prep['timeout']:.0f} s to check"
    if "encode_error" in prep:
        return f"**encode fails**: {prep['encode_error']}"
    if "decode_error" in prep:
        return f"**decode fails**: {prep['decode_error']}"
    return "exact" if not prep["changes"] else ", ".join(prep["changes"])


def _failed(c: Cell, op: str) -> bool:
    return "encode_error" in c.prep or "timeout" in c.prep or (op == "decode" and "decode_error" in c.prep)


def _timing(c: Cell, op: str) -> str:
    if _failed(c, op):
        return "—"
    limit = c.timed_out(op)
    if limit is not None:
        return f"> {limit:.0f} s"
    return fmt_time(c.median(op, "time"), c.factor != 1) + (" /msg" if c.payload.repeat > 1 else "")


def _peak(c: Cell, op: str) -> str:
    if _failed(c, op) or c.payload.repeat > 1 or c.timed_out(op):
        return "—"
    return fmt_bytes(c.median(op, "peak"), c.factor != 1)


def table(cells: list[Cell]) -> str:
    out = ["| payload | serializer | encoded size | encode | decode | encode peak | decode peak | round trip |",
           "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        size = None if _failed(c, "encode") else c.prep.get("size", 0) * c.factor
        out.append(f"| {c.payload.name} | {c.serializer} | {fmt_bytes(size, c.factor != 1)} | {_timing(c, 'encode')} "
                   f"| {_timing(c, 'decode')} | {_peak(c, 'encode')} | {_peak(c, 'decode')} | {round_trip(c)} |")
    return "\n".join(out)


def conversions(cells: list[Cell]) -> str:
    """The pandas side of the DataFrame rows on its own (the same with every serializer: taken from pickle's runs)."""
    out = ["| way | to send | to rebuild |", "|---|---|---|"]
    for c in cells:
        if c.serializer != "pickle" or (c.payload.prepare is _identity and c.payload.rebuild is _identity):
            continue
        out.append(f"| {c.payload.name} | {c.payload.prepare_name} {fmt_time(c.median('encode', 'convert'))} | "
                   + (f"{c.payload.rebuild_name} {fmt_time(c.median('decode', 'convert'))}"
                      if c.payload.rebuild is not _identity else "—") + " |")
    return "\n".join(out)


def machine() -> dict:
    import kombu
    import msgpack
    import numpy
    import pandas
    import pyarrow
    import yaml
    from common import versions

    found = versions()
    found.update(msgpack=".".join(map(str, msgpack.version)), pyyaml=yaml.__version__, pandas=pandas.__version__,
                 pyarrow=pyarrow.__version__, numpy=numpy.__version__, kombu=kombu.__version__,
                 yaml_libyaml=bool(getattr(yaml, "__with_libyaml__", False)), platform=platform.platform())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every payload size (not the task call)")
    parser.add_argument("--yaml-fraction", type=float, default=0.01,
                        help="yaml runs on this fraction of the large payloads, scaled up linearly")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per subprocess before '> N s'")
    parser.add_argument("--only", default="", help="comma-separated payload names (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    chosen = [BY_NAME[n.strip()] for n in args.only.split(",") if n.strip()] or PAYLOADS
    folder = Path(tempfile.mkdtemp(prefix="oomless-serializers-"))
    cells: list[Cell] = []
    jobs = {}
    for p in chosen:
        for s in SERIALIZERS:
            size = p.size if p.repeat > 1 else p.size * args.scale
            factor = 1.0
            if s == "yaml" and p.yaml_scaled:
                size, factor = size * args.yaml_fraction, 1 / args.yaml_fraction
            cell = Cell(p, s, factor)
            job = {"payload": p.name, "serializer": s, "size": size, "file": str(folder / f"{len(cells)}.bin")}
            cell.prep = run_child({**job, "op": "prep"}, args.timeout)
            print(f"checked  {p.name} / {s}: {round_trip(cell)}", file=sys.stderr, flush=True)
            if any("CHANGED" in c for c in cell.prep.get("changes", ())):
                print(f"WARNING: {s} changed the VALUES of {p.name}: {cell.prep['changes']}", file=sys.stderr)
            cells.append(cell)
            jobs[id(cell)] = job
    for r in range(args.rounds):
        for cell in cells:
            if "encode_error" in cell.prep or "timeout" in cell.prep:
                continue
            for op in ("encode", "decode"):
                if op == "decode" and "decode_error" in cell.prep:
                    continue
                if cell.timed_out(op):  # once too slow, always too slow: do not pay the timeout again
                    continue
                result = run_child({**jobs[id(cell)], "op": op}, args.timeout)
                getattr(cell, op).append(result)
                if not result.get("resettable", True):
                    print("note: VmHWM could not be reset; peaks are lower bounds", file=sys.stderr)
            print(f"round {r + 1}/{args.rounds}  {cell.payload.name} / {cell.serializer}: encode "
                  f"{fmt_time(cell.median('encode', 'time'))}, decode {fmt_time(cell.median('decode', 'time'))}",
                  file=sys.stderr, flush=True)

    facts = machine()
    print(f"\nPython {facts['python']}, kombu {facts['kombu']}, celery {facts['celery']}, msgpack {facts['msgpack']}, "
          f"PyYAML {facts['pyyaml']} (libyaml {'available' if facts['yaml_libyaml'] else 'absent'}; kombu uses "
          f"the pure-Python safe_dump/safe_load), pandas {facts['pandas']}, pyarrow {facts['pyarrow']}, "
          f"numpy {facts['numpy']}; {facts['cpus']} CPUs, {facts['mem_gib']} GiB, Linux {facts['kernel']}")
    print(f"{args.rounds} rounds, medians; scale {args.scale:g}; yaml on {args.yaml_fraction:g} of the large "
          f"payloads, scaled ×{1 / args.yaml_fraction:g} (≈)\n")
    print(table(cells))
    print("\nThe pandas side of the DataFrame rows (included in their encode/decode times):\n")
    print(conversions(cells))
    from common import emit

    emit("serializers", {
        "versions": facts, "rounds": args.rounds, "scale": args.scale, "yaml_fraction": args.yaml_fraction,
        "cells": [{
            "payload": c.payload.name, "serializer": c.serializer, "factor": c.factor, "prep": c.prep,
            "encode_s": c.median("encode", "time"), "decode_s": c.median("decode", "time"),
            "encode_peak": c.median("encode", "peak"), "decode_peak": c.median("decode", "peak"),
            "encode_convert_s": c.median("encode", "convert"), "decode_convert_s": c.median("decode", "convert"),
        } for c in cells],
    })
    if not os.environ.get("OOMLESS_BENCH_KEEP"):
        _cleanup(folder)


def _cleanup(folder: Path) -> None:
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
