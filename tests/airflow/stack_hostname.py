"""``[core] hostname_callable`` for the test deployment: the worker's serve-logs listens on 127.0.0.1."""


def localhost() -> str:
    return "127.0.0.1"
