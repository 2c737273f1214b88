"""Submit a few tasks to the example worker and show how each ends."""

from etl import shell_sort, train, transform

import oomless

calls = [
    ("transform(1_000_000)", transform.delay(1_000_000)),
    ("train(300)", train.delay(300)),
    ("train(2000)  runaway", train.delay(2000)),
    ("train(700) with memory=1GiB", train.apply_async([700], memory="1GiB")),
    ("shell_sort(1024)  runaway subprocess", shell_sort.delay(1024)),
]
for label, result in calls:
    try:
        print(f"{label:40s} -> ok: {result.get(timeout=120)}")
    except oomless.MemoryLimitExceeded as exc:
        print(f"{label:40s} -> MemoryLimitExceeded: limit {exc.limit >> 20} MiB, peak {exc.peak >> 20} MiB")
