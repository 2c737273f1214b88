"""Chunking a 2 GiB CSV and its Parquet twin (issue 7): peak RSS and time of one group-by.

    .venv/bin/python bench/chunking.py [--gib 2.2] [--rounds 2] [--data /var/tmp/oomless-bench]

Data (generated once, cached under --data, reused when present): a CSV of
>= 2 GiB with ints, floats, a low-cardinality string key (the group-by key)
and a free-text string column (commas and doubled quotes inside quoted
fields), and its Parquet twin with row groups of 1,000,000 rows (~100 MiB
uncompressed).

Every case runs in a fresh interpreter (``python bench/chunking.py --case
NAME``); the parent reads the child's time and peak RSS from ``os.wait4``
(``ru_maxrss``; the child also reports its own VmHWM).  The aggregation is
per key: row count, sum of ``qty``, sum of ``price``, max of ``score`` and
the total length of ``note``.  Cases:

* csv (a) ``pandas.read_csv`` of the whole file, then ``groupby``;
* csv (b) ``pandas.read_csv(chunksize=10_000)``, aggregated chunk by chunk;
* csv (c) ``oomless.data.chunks(memory="256MiB")`` with pandas, pyarrow, polars;
* parquet (a) ``pandas.read_parquet`` of the whole file;
* parquet (c) ``oomless.data.chunks(memory="256MiB")`` with each engine.

Baselines, one per engine and format, in the same run: a child that imports
the same libraries and reads a tiny file the same way.  Targets: (c) peak −
baseline <= budget; (c) time <= 1.2 × the best of (a)/(b).  All cases must
agree on the aggregate (the run fails otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 2**20
GiB = 2**30
BUDGET = "256MiB"
KEYS = 40
ROWS_PER_BATCH = 1_000_000
ENGINES = ("pandas", "pyarrow", "polars")


# ---------------------------------------------------------------- the data


def _notes(rng, n: int) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "north", "south", "order", "late", "ok", "refund", "box", "x",
             "customer", "said", "it's", "fine", "broken", "again", "2024", "ticket"]
    out = []
    for _ in range(n):
        k = int(rng.integers(2, 12))
        text = " ".join(words[int(i)] for i in rng.integers(0, len(words), k))
        roll = rng.random()
        if roll < 0.15:
            text = text.replace(" ", ", ", 1)  # a comma inside a quoted field
        elif roll < 0.2:
            text = f'he said "{text}"'  # doubled quotes inside a quoted field
        out.append(text)
    return out


def generate(folder: Path, gib: float) -> tuple[Path, Path]:
    """The CSV and its Parquet twin under ``folder`` (reused when both are complete)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    csv_path, pq_path, done = folder / "sales.csv", folder / "sales.parquet", folder / "sales.done"
    if done.exists() and json.loads(done.read_text()).get("gib") == gib:
        return csv_path, pq_path
    rng = np.random.default_rng(7)
    keys = pa.array([f"region-{i:02d}" for i in range(KEYS)])
    notes = pa.array(_notes(rng, 20_000))
    target = int(gib * GiB)
    start = 0
    began = time.monotonic()
    with open(csv_path, "wb") as out, pq.ParquetWriter(pq_path, _schema(), compression="snappy") as pw:
        first = True
        while out.tell() < target:
            n = ROWS_PER_BATCH
            table = pa.table({
                "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "qty": pa.array(rng.integers(0, 1000, n, dtype=np.int64)),
                "price": pa.array(np.round(rng.gamma(2.0, 30.0, n), 2)),
                "score": pa.array(rng.standard_normal(n)),
                "key": keys.take(pa.array(rng.integers(0, KEYS, n))),
                "note": notes.take(pa.array(rng.integers(0, len(notes), n))),
            }, schema=_schema())
            pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=first, quoting_style="needed"))
            pw.write_table(table, row_group_size=ROWS_PER_BATCH)
            first = False
            start += n
    done.write_text(json.dumps({"gib": gib, "rows": start, "csv_bytes": csv_path.stat().st_size,
                                "parquet_bytes": pq_path.stat().st_size}))
    print(f"generated {start:,} rows in {time.monotonic() - began:.0f} s: {csv_path} "
          f"{csv_path.stat().st_size / GiB:.2f} GiB, {pq_path} {pq_path.stat().st_size / GiB:.2f} GiB", flush=True)
    return csv_path, pq_path


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("qty", pa.int64()), ("price", pa.float64()), ("score", pa.float64()),
                      ("key", pa.string()), ("note", pa.string())])


def tiny(folder: Path, csv_path: Path, pq_path: Path) -> tuple[Path, Path]:
    """The first 1,000 rows of both files: what the baseline children read."""
    import pyarrow.parquet as pq

    small_csv, small_pq = folder / "tiny.csv", folder / "tiny.parquet"
    if not small_csv.exists():
        with open(csv_path, "rb") as f:
            small_csv.write_bytes(b"".join(f.readline() for _ in range(1001)))
    if not small_pq.exists():
        pq.write_table(pq.ParquetFile(pq_path).read_row_group(0).slice(0, 1000), small_pq)
    return small_csv, small_pq


# ---------------------------------------------------------------- one case, in the child


def _agg_frame(frame, engine: str) -> dict[str, list]:
    """Per key: [rows, sum qty, sum price, max score, total note length] of one frame."""
    if engine == "pyarrow":
        import pyarrow.compute as pc

        table = frame.append_column("note_len", pc.utf8_length(frame["note"]))
        out = table.group_by("key").aggregate(
            [("qty", "count"), ("qty", "sum"), ("price", "sum"), ("score", "max"), ("note_len", "sum")]).to_pydict()
        cols = ["qty_count", "qty_sum", "price_sum", "score_max", "note_len_sum"]
        return {k: [out[c][i] for c in cols] for i, k in enumerate(out["key"])}
    if engine == "polars":
        import polars as pl

        out = frame.group_by("key").agg(pl.len(), pl.col("qty").sum(), pl.col("price").sum(), pl.col("score").max(),
                                        pl.col("note").str.len_chars().sum())
        return {row[0]: list(row[1:]) for row in out.iter_rows()}
    g = frame.assign(note_len=frame["note"].str.len()).groupby("key", sort=False)
    out = g.agg(rows=("qty", "size"), qty=("qty", "sum"), price=("price", "sum"), score=("score", "max"),
                note=("note_len", "sum"))
    return {k: [int(r.rows), int(r.qty), float(r.price), float(r.score), int(r.note)] for k, r in out.iterrows()}


def _merge(total: dict[str, list], part: dict[str, list]) -> None:
    for key, (rows, qty, price, score, note) in part.items():
        if key in total:
            t = total[key]
            total[key] = [t[0] + rows, t[1] + qty, t[2] + price, max(t[3], score), t[4] + note]
        else:
            total[key] = [rows, qty, price, score, note]


def _vmhwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_case(case: str, path: str) -> None:
    """Run one case in this (fresh) process and print its JSON result line."""
    began = time.monotonic()
    total: dict[str, list] = {}
    frames = 0
    what, engine = case.rsplit(":", 1)
    if what == "full":
        import pandas as pd

        frame = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
        _merge(total, _agg_frame(frame, "pandas"))
        frames = 1
    elif what == "chunksize":
        import pandas as pd

        for frame in pd.read_csv(path, chunksize=10_000):
            _merge(total, _agg_frame(frame, "pandas"))
            frames += 1
    elif what == "chunks":
        from oomless.data import chunks

        for frame in chunks(path, memory=BUDGET, engine=engine):
            _merge(total, _agg_frame(frame, engine))
            frames += 1
    else:
        raise SystemExit(f"unknown case {case!r}")
    print(json.dumps({"seconds": time.monotonic() - began, "frames": frames, "vmhwm": _vmhwm(),
                      "aggregate": {k: total[k] for k in sorted(total)}}))


def measure(case: str, path: Path) -> dict:
    """Time, peak RSS (wait4) and the aggregate of one case in a fresh interpreter."""
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--case", case, "--path", str(path)], stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - began
    if os.waitstatus_to_exitcode(status) != 0:
        err.seek(0)
        raise SystemExit(f"case {case} on {path} failed:\n{err.read().decode()[-3000:]}")
    out.seek(0)
    result = json.loads(out.read().decode().strip().splitlines()[-1])
    result.update(wall=wall, peak=usage.ru_maxrss * 1024)
    return result


# ---------------------------------------------------------------- the run, in the parent


def cases(csv_path: Path, pq_path: Path, small_csv: Path, small_pq: Path) -> list[dict]:
    """Every case: its format, label, the child's case name, the big file and its tiny twin (the baseline)."""
    out = [
        {"format": "csv", "label": "(a) pandas.read_csv", "case": "full:pandas"},
        {"format": "csv", "label": "(b) read_csv(chunksize=10_000)", "case": "chunksize:pandas"},
        *({"format": "csv", "label": f"(c) chunks {e}", "case": f"chunks:{e}"} for e in ENGINES),
        {"format": "parquet", "label": "(a) pandas.read_parquet", "case": "full:pandas"},
        *({"format": "parquet", "label": f"(c) chunks {e}", "case": f"chunks:{e}"} for e in ENGINES),
    ]
    for c in out:
        c["path"], c["tiny"] = (csv_path, small_csv) if c["format"] == "csv" else (pq_path, small_pq)
    return out


def agree(reference: dict, got: dict, what: str) -> None:
    """Fail loudly unless two aggregates match (counts and integer sums exactly, float sums to 1e-9)."""
    if sorted(reference) != sorted(got):
        raise SystemExit(f"AGGREGATES DIFFER: {what} has keys {sorted(got)} instead of {sorted(reference)}")
    for key, want in reference.items():
        have = got[key]
        exact = [want[0], want[1], want[4]] == [have[0], have[1], have[4]]
        close = abs(want[2] - have[2]) <= 1e-9 * abs(want[2]) and abs(want[3] - have[3]) <= 1e-12 * abs(want[3])
        if not (exact and close):
            raise SystemExit(f"AGGREGATES DIFFER: {what}, key {key}: {have} instead of {want}")


def lib_versions() -> dict:
    from importlib.metadata import version

    from common import versions

    out = versions()
    out.update({name: version(name) for name in ("pandas", "pyarrow", "polars", "numpy", "fsspec")})
    return out


def main(args: argparse.Namespace) -> None:
    from common import emit

    folder = Path(args.data)
    # Generated in a child: a parent that once held big tables passes its RSS high-water mark on to
    # every child it starts (the kernel keeps the old mm's peak at exec), which would spoil wait4's figures.
    subprocess.run([sys.executable, __file__, "--generate", "--gib", str(args.gib), "--data", str(folder)],
                   check=True)
    csv_path, pq_path = folder / "sales.csv", folder / "sales.parquet"
    small_csv, small_pq = folder / "tiny.csv", folder / "tiny.parquet"
    table = cases(csv_path, pq_path, small_csv, small_pq)
    if args.only:
        table = [c for c in table if any(o in f"{c['format']}/{c['case']}" for o in args.only)]
    runs: dict[int, list[dict]] = {i: [] for i in range(len(table))}
    bases: dict[int, list[dict]] = {i: [] for i in range(len(table))}
    reference = None
    for rnd in range(args.rounds):
        order = list(range(len(table)))
        if rnd % 2:
            order.reverse()
        for i in order:
            c = table[i]
            base = measure(c["case"], c["tiny"])
            r = measure(c["case"], c["path"])
            if reference is None:
                reference = r["aggregate"]
            agree(reference, r["aggregate"], f"{c['format']} {c['label']}")
            runs[i].append(r)
            bases[i].append(base)
            print(f"round {rnd + 1}: {c['format']:7s} {c['label']:31s} {r['wall']:6.1f} s  "
                  f"peak {r['peak'] / MiB:6.0f} MiB (VmHWM {r['vmhwm'] / MiB:.0f})  "
                  f"baseline {base['peak'] / MiB:4.0f} MiB  frames {r['frames']}",
                  flush=True)
    budget = 256 * MiB
    rows = []
    for i, c in enumerate(table):
        wall = statistics.median(r["wall"] for r in runs[i])
        peak = statistics.median(r["peak"] for r in runs[i])
        base = statistics.median(b["peak"] for b in bases[i])
        rows.append(dict(format=c["format"], label=c["label"], case=c["case"], seconds=round(wall, 1),
                         peak_mib=round(peak / MiB), baseline_mib=round(base / MiB),
                         over_baseline_mib=round((peak - base) / MiB), frames=runs[i][0]["frames"],
                         all_seconds=[round(r["wall"], 1) for r in runs[i]],
                         all_peak_mib=[round(r["peak"] / MiB) for r in runs[i]],
                         all_vmhwm_mib=[round(r["vmhwm"] / MiB) for r in runs[i]]))
    print(f"\n| format | case | time | time / best (a),(b) | peak RSS | baseline | peak − baseline | "
          f"(peak − baseline) / {BUDGET} | frames |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        fits = [r["seconds"] for r in rows if r["format"] == row["format"] and r["label"][:3] in ("(a)", "(b)")]
        best = min(fits) if fits else float("nan")
        row["time_vs_best"] = round(row["seconds"] / best, 2)
        ratio = f"{row['over_baseline_mib'] * MiB / budget:.2f}" if row["label"].startswith("(c)") else "–"
        print(f"| {row['format']} | {row['label']} | {row['seconds']:.1f} s | {row['time_vs_best']:.2f} | "
              f"{row['peak_mib']:,} MiB | {row['baseline_mib']} MiB | {row['over_baseline_mib']:,} MiB | {ratio} | "
              f"{row['frames']} |")
    meta = json.loads((folder / "sales.done").read_text())
    emit("chunking", {"versions": lib_versions(), "data": meta, "budget": BUDGET, "rounds": args.rounds,
                      "cases": rows})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.2, help="size of the generated CSV")
    parser.add_argument("--data", default="/var/tmp/oomless-bench", help="where the data is generated and kept")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, in alternating order; medians are reported")
    parser.add_argument("--only", nargs="*", help="run only cases whose 'format/case' contains one of these")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.path)
        # Skip the interpreter's teardown: pyarrow's threads sometimes abort it after the work is done
        # ("terminate called without an active exception", apache/arrow#34314).
        sys.stdout.flush()
        os._exit(0)
    elif args.generate:
        csv_path, pq_path = generate(Path(args.data), args.gib)
        tiny(Path(args.data), csv_path, pq_path)
    else:
        main(args)
