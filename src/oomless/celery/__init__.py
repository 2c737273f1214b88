"""Glue between Celery and the oomless core: install(), a worker bootstep, signals, a Request mixin."""

from .install import install

__all__ = ["install"]
