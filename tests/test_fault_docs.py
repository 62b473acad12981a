"""README's fault tables, pinned against the code: a fault added, or its routes changed,
without the docs following makes this red."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from apimart_async.testing import Fault
from apimart_async.testing._faults import RANDOM_FAULTS, ROUTES

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")

# Arguments for the constructors that need some (any valid value will do).
SAMPLE_ARGS: dict[str, tuple[object, ...]] = {
    "http": (503,), "body_status": (500,), "redirect": ("https://example.com",),
    "slow": (1.0,), "result_url": ("file:///etc/passwd",), "answer_id": ("x",),
    "task_status": ("done",),
}


def constructors() -> dict[str, Fault]:
    """Every public class method of `Fault` that builds one, built."""
    built = {}
    for name, member in inspect.getmembers(Fault):
        if name.startswith("_") or not inspect.ismethod(member) or member.__self__ is not Fault:
            continue
        built[name] = member(*SAMPLE_ARGS.get(name, ()))
    return built


def documented_routes() -> dict[str, set[str]]:
    """From README's 'Faults, per route' table: constructor name -> routes marked yes."""
    section = README.split("### Faults, per route", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `Fault.")]
    table: dict[str, set[str]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`(?:Fault\.)?(\w+)\(", cells[0])
        routes = {route for route, cell in zip(ROUTES, cells[1:], strict=True)
                  if cell.startswith("yes")}
        for name in names:
            table[name] = routes
    return table


def test_every_fault_is_in_the_table_with_its_routes() -> None:
    built = constructors()
    documented = documented_routes()
    assert sorted(documented) == sorted(built), "README's fault table lists other faults"
    for name, fault in built.items():
        assert documented[name] == set(fault.routes), name


def test_random_faults_table_matches_the_draws() -> None:
    section = README.split("<!-- random-faults -->", 1)[1]
    for route in ROUTES:
        row = re.search(rf"^\| `{route}` \| (.*) \|$", section, re.MULTILINE)
        assert row is not None, route
        assert row.group(1) == ", ".join(f"`{f.describe()}`" for f in RANDOM_FAULTS[route])
