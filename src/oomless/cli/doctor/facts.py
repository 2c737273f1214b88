"""What ``oomless doctor`` found, as typed results: the facts of each part, and one :class:`Check` per line.

A :class:`Diagnosis` holds the raw figures doctor gathered (versions, memory,
cgroup, watchdog, pool, budget, mode, tasks, result backend, claim check,
admission, Airflow, history and metrics) and the :class:`Check` lines said about
them.  :meth:`Diagnosis.to_dict` is what ``--json`` prints.

Not here: how the facts are gathered (:mod:`.diagnose`, :mod:`.backend`), how
the lines are worded (:mod:`.checks`), or how they are printed (:func:`oomless.cli.doctor.render`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "State", "Check", "Versions", "Memory", "Cgroup", "Watchdog", "Pool", "Budget", "DefaultMemory", "Mode",
    "TaskMemory", "Serializers", "Results", "Offload", "Admission", "Airflow", "Observe", "Diagnosis",
]

#: ``ok``: nothing to do; ``warn``: a worker runs, but something on this line needs a look (a ``warning:``
#: of doctor's, or a limit that is not enforced); ``fail``: why a worker with these settings would not start.
State = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One line of doctor's report: its name, a state, the sentence shown, and the figures behind it."""

    name: str
    state: State
    sentence: str
    #: Lines printed under this one, without a name of their own (notes, one task per line, …).
    notes: tuple[str, ...] = ()
    #: The raw figures the sentence is about (bytes, seconds, names), for machines.
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Versions:
    """The versions a worker on this host would run with."""

    python: str
    celery: str
    billiard: str
    kombu: str
    kernel: str


@dataclass(frozen=True)
class Memory:
    """The machine's memory and this process's cgroup limit (None: unlimited), in bytes."""

    machine: int
    cgroup_limit: int | None


@dataclass(frozen=True)
class Cgroup:
    """This process's memory cgroup, whether a worker could make its slot groups there, and why (not)."""

    version: int | None
    path: str | None
    writable: bool
    reason: str
    note: str
    #: cgroup v2: what eviction reads from the worker's own group (None: not v2).
    pressure: str | None = None
    psi: bool | None = None
    memory_high: int | None = None


@dataclass
class Watchdog:
    """Whether the watchdog works here, and what it cannot see; the poll once the settings are read."""

    works: bool
    problem: str | None
    blind_spots: list[str]
    poll_interval: float | None = None
    overshoot: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``poll_interval`` and ``overshoot`` only once the settings could be read."""
        found = asdict(self)
        if self.poll_interval is None:
            del found["poll_interval"], found["overshoot"]
        return found


@dataclass(frozen=True)
class Pool:
    """The worker pool, and whether it runs each task in a child of its own (so a limit can be enforced)."""

    name: str
    isolates_tasks: bool


@dataclass(frozen=True)
class Budget:
    """The worker's budget in bytes, where it came from, and the warning it carries (if any)."""

    bytes: int
    source: str
    auto: bool
    ceiling: int | None
    reserve: int | None
    warning: str | None = None


@dataclass(frozen=True)
class DefaultMemory:
    """``oomless_default_memory``: the spec of tasks that declare none, in bytes."""

    request: int | None
    limit: int | None


@dataclass
class Mode:
    """The enforcement mode asked for and the one chosen (None while not chosen, or when it cannot work)."""

    requested: str
    chosen: str | None = None
    reason: str | None = None
    warning: str | None = None


@dataclass(frozen=True)
class TaskMemory:
    """A registered task's declared memory (None: not declared), and whether it can never fit the budget."""

    name: str
    request: int | None
    limit: int | None
    infeasible: bool


@dataclass(frozen=True)
class Serializers:
    """The serializer names an app uses (content types turned into kombu's names)."""

    task: str
    result: str
    accept: list[str]
    result_accept: list[str]


@dataclass(frozen=True)
class Results:
    """Where task results go and whether they expire, judged from the configuration (see :mod:`.backend`)."""

    backend: str
    kind: str | None
    expires: float | None
    expiry: str | None
    storing: list[str]
    serializers: Serializers
    #: What is wrong with where results go (the backend, its expiry).
    problems: list[str]
    #: The settings that name pickle, and the one warning about them (None: no pickle).
    pickle_in: list[str]
    pickle: str | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``problems`` lists the serializer warning too (docs/data.md)."""
        found = asdict(self)
        found["problems"] = self.all_problems
        del found["pickle"]
        return found

    @property
    def all_problems(self) -> list[str]:
        """Every warning about results and serializers, backend first."""
        return self.problems + ([self.pickle] if self.pickle else [])


@dataclass(frozen=True)
class Offload:
    """The claim check (``oomless_offload``) or, without a store, the size limit on task messages."""

    store: str | None
    local: bool
    threshold: int
    ttl: float | None
    limit: int
    broker: str
    problems: list[str]


@dataclass(frozen=True)
class Admission:
    """Whether tasks are packed by their requests, with which bounds, and whether eviction runs."""

    on: bool
    reason: str
    max_waiting: int | None
    backfill_window: float
    give_back_after: float | None
    infeasible_queue: str | None
    eviction: bool
    max_evictions: int
    eviction_margin: int


@dataclass(frozen=True)
class Airflow:
    """The Airflow packages installed, and what happens to a try over its limit."""

    versions: dict[str, str]
    enforcement: str
    floor: str = ""  # what a try costs at least, in words
    floor_bytes: int = 0


@dataclass(frozen=True)
class Observe:
    """Where history and metrics go (None: off); the history URL has its password hidden."""

    history: str | None
    learned: bool
    metrics: str | None
    learned_tasks: int | None = None  # tasks with a learned size in the history (learned on and readable)
    learned_problem: str | None = None  # why none could be read


#: ``-A`` for an Airflow Celery worker: the provider's app, configured from ``[celery]`` and, through
#: ``celery_config_options = oomless.airflow.celery_config.CELERY_CONFIG``, from ``[oomless]``.
AIRFLOW_APP = "airflow.providers.celery.executors.celery_executor_utils:app"


@dataclass
class Diagnosis:
    """Everything doctor found.  A part that is None was not reached: an ``error`` stopped the diagnosis first."""

    app: str | None
    versions: Versions
    memory: Memory
    cgroup: Cgroup
    watchdog: Watchdog
    pool: Pool | None = None
    budget: Budget | None = None
    default_memory: DefaultMemory | None = None
    mode: Mode | None = None
    tasks: list[TaskMemory] | None = None
    results: Results | None = None
    offload: Offload | None = None
    admission: Admission | None = None
    airflow: Airflow | None = None
    observe: Observe | None = None
    #: Without -A on an Airflow host: why doctor could not read its [oomless] (None: it could, or no Airflow).
    airflow_note: str | None = None
    #: Why a worker with these settings would refuse to start (None: it would start).
    error: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether a worker with these settings would start."""
        return self.error is None

    @property
    def warnings(self) -> list[str]:
        """doctor's warnings, in the order found: budget, results, claim check, mode."""
        found = [self.budget.warning] if self.budget is not None and self.budget.warning else []
        found += self.results.all_problems if self.results is not None else []
        found += self.offload.problems if self.offload is not None else []
        found += [self.mode.warning] if self.mode is not None and self.mode.warning else []
        return found

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: what ``oomless doctor --json`` prints.  Parts not reached are left out."""
        found: dict[str, Any] = {"ok": self.ok, "error": self.error, "app": self.app, "warnings": self.warnings}
        parts = (
            ("versions", self.versions, True),
            ("memory", self.memory, True),
            ("cgroup", self.cgroup, True),
            ("watchdog", self.watchdog, True),
            ("pool", self.pool, self.pool is not None),
            ("budget", self.budget, self.budget is not None),
            # read with the budget: null is an answer here (no default), not a part left out
            ("default_memory", self.default_memory, self.budget is not None),
            ("mode", self.mode, self.mode is not None),
            ("tasks", self.tasks, self.tasks is not None),
            ("results", self.results, self.results is not None),
            ("offload", self.offload, self.offload is not None),
            ("admission", self.admission, self.admission is not None),
            # judged with admission once the mode is chosen; null: Airflow is not installed
            ("airflow", self.airflow, self.admission is not None),
            ("observe", self.observe, self.observe is not None),
            ("checks", self.checks, True),
        )
        for name, part, reached in parts:
            if reached:
                found[name] = _jsonable(part)
        return found


def _jsonable(part: Any) -> Any:
    """A part as JSON: its own ``to_dict`` where it has one, its fields otherwise."""
    if isinstance(part, list):
        return [_jsonable(item) for item in part]
    if hasattr(part, "to_dict"):
        return part.to_dict()
    return None if part is None else asdict(part)
