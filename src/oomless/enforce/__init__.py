"""Enforcers: keep each slot's process tree under its task's limit, kill only the offender.

Two modes behind one protocol (:class:`~oomless.enforce.base.Enforcer`):
``cgroup`` (the kernel enforces, overshoot 0) and ``watchdog`` (a poller in the
worker main process, for hosts without writable cgroups).  One concern a module:

* :mod:`.base`: the protocol, the monitor thread's life, the task protocol each mode fills in
* :mod:`.reports`: kill reports, filed before a kill, claimed once; the kill notices
* :mod:`.pressure`: the eviction check both monitors run; :mod:`.eviction`: its pure rules
* :mod:`.footprint`: what the worker itself holds, apart from its tasks
* :mod:`.ownership`: a slot's processes are its task's; sweeping what a task or a dead worker left
* :mod:`.readers`: what the main process reads and how it kills (replaceable in tests)
* :mod:`.cgroup`, :mod:`.cgroup_monitor`: cgroup mode, and its monitor thread
* :mod:`.watchdog`, :mod:`.tree`: watchdog mode, and what it knows of one slot's process tree
* :mod:`.slots`: the shared-memory table where pool children publish their slot's state
* :mod:`.modes`: which mode runs on this host, and why
"""
