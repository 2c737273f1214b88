"""Every module logs under its own name (``oomless.<layer>.<module>``), so an operator can quiet one
part (admission chatter) without losing another (kill lines)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "oomless"


def test_every_logger_in_the_library_is_named_after_its_module():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "logging"):
                arg = node.args[0] if node.args else None
                if not (isinstance(arg, ast.Name) and arg.id == "__name__"):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []


def test_quieting_admission_keeps_the_kill_lines(caplog):
    from oomless.celery import gate, request

    caplog.set_level(logging.INFO, logger="oomless")
    logging.getLogger("oomless.celery.gate").setLevel(logging.WARNING)
    try:
        gate.logger.info("oomless: t[1] waits (no free slot)")
        request.logger.error("oomless: t[2] exceeded its memory limit")
    finally:
        logging.getLogger("oomless.celery.gate").setLevel(logging.NOTSET)
    assert [r.message for r in caplog.records] == ["oomless: t[2] exceeded its memory limit"]
    assert {r.name for r in caplog.records} == {"oomless.celery.request"}
