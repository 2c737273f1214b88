"""The app of bench/offload.py: OOMLESS_BENCH_VARIANT is vanilla, guard (oomless, no store) or claim."""

import os

from celery import Celery

variant = os.environ["OOMLESS_BENCH_VARIANT"]
app = Celery("offload", broker=os.environ["OOMLESS_BENCH_BROKER"], backend=os.environ["OOMLESS_BENCH_BACKEND"])
app.conf.update(task_default_queue=os.environ["OOMLESS_BENCH_QUEUE"], worker_prefetch_multiplier=1,
                result_expires=600, broker_connection_retry_on_startup=True)
if variant != "vanilla":
    import oomless

    app.conf.update(oomless_enforcement="watchdog", oomless_max_message_size="1GiB")
    if variant == "claim":
        app.conf.oomless_offload = os.environ["OOMLESS_BENCH_STORE"]
    oomless.install(app)


@app.task(name="offload.size")
def size(data):
    return len(data)


@app.task(name="offload.make")
def make(n):
    return "r" * n
