"""README.md's examples stay true: its spec parses, and its command list names real commands."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from modelyard.cli import app, runs_app
from modelyard.pipeline import parse_spec

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_spec_is_a_valid_spec() -> None:
    text = README.read_text(encoding="utf-8")
    block = text.split("## A spec", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    spec = parse_spec(yaml.safe_load(block))
    # every optional section the example shows is really there (a renamed key would drop silently otherwise)
    for section in ("search", "explain", "compress", "remediation"):
        assert getattr(spec, section) is not None, section


def test_the_readme_commands_exist() -> None:
    code = "\n".join(README.read_text(encoding="utf-8").split("```")[1::2])  # the fenced blocks only
    names = {c.name for c in app.registered_commands} | {f"runs {c.name}" for c in runs_app.registered_commands}
    used = re.findall(r"^modelyard (?:--debug )?(runs \w+|\w+)", code, flags=re.MULTILINE)
    assert used and set(used) <= names, sorted(set(used) - names)


def test_every_example_spec_is_valid() -> None:
    from modelyard.pipeline import load_spec

    examples = sorted((README.parent / "examples").glob("*.yaml"))
    # gate.yaml (a gate file) and compress_*.yaml (variant lists for `modelyard compress --variants`) are not specs
    specs = [p for p in examples if "name" in (yaml.safe_load(p.read_text(encoding="utf-8")) or {})]
    assert len(specs) >= 5
    for path in specs:
        load_spec(path)  # raises SpecError naming the field
