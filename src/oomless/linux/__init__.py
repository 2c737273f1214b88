"""Linux facts behind small functions: /proc readers, cgroup files, safe process kills.

This layer reads files and returns numbers; it knows nothing of Celery and
decides nothing.
"""
