"""README's fault docs, pinned against the code beside tests/test_emulator_toolkit.py (which
checks each listed fault's routes): here, that every `Fault` constructor is listed at all,
and the random faults each route draws."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from apimart_async.testing import Fault
from apimart_async.testing._faults import RANDOM_FAULTS, ROUTES

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def constructors() -> set[str]:
    """The public class methods of `Fault` (each builds one)."""
    return {name for name, member in inspect.getmembers(Fault)
            if not name.startswith("_") and inspect.ismethod(member)
            and member.__self__ is Fault}


def test_every_fault_constructor_is_in_the_table() -> None:
    section = README.split("### Faults, per route", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `Fault.")]
    listed = {name for row in rows
              for name in re.findall(r"`(?:Fault\.)?(\w+)\(", row.strip("|").split("|")[0])}
    assert listed == constructors(), "README's fault table lists other faults than Fault has"


def test_random_faults_table_matches_the_draws() -> None:
    section = README.split("<!-- random-faults -->", 1)[1]
    for route in ROUTES:
        row = re.search(rf"^\| `{route}` \| (.*) \|$", section, re.MULTILINE)
        assert row is not None, route
        assert row.group(1) == ", ".join(f"`{f.describe()}`" for f in RANDOM_FAULTS[route])
