"""Enforcers: keep each slot's process tree under its task's limit, kill only the offender.

Two modes behind one protocol (:class:`~oomless.enforce.base.Enforcer`):
``cgroup`` (the kernel enforces, overshoot 0) and ``watchdog`` (a poller in the
worker main process, for hosts without writable cgroups).
"""
