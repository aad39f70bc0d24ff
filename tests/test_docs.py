"""The user documentation in ``docs/`` names everything the code exposes, and stays inside.

Each test reads the names off the code (the metrics registry, the settings'
environment maps, the CLI parser, the contract's reasons, the records the
code builds), so a metric, setting, command, flag, reason or field added
without its documentation fails here.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import producers.contract as contract
import streams.settings as settings
from online_models.base import Learner
from producers.contract import CatalogItem, Event, ItemContent
from streams.cli import build_parser
from streams.metrics import Metrics
from streams.pipeline import DeadLetter
from streams.ranking import Ranker, RankingConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def all_docs() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(DOCS.glob("*.md")))


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section (up to the next ``## `` heading)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section '## {title}'"
    return match.group(1)


def mentions(text: str, name: str) -> bool:
    """``name`` appears as a whole word (``--batch`` is not ``--batch-size``)."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def in_code(text: str, name: str) -> bool:
    """``name`` appears in backticks, alone or as ``items[].name``."""
    return re.search(rf"`(?:items\[\]\.)?{re.escape(name)}`", text) is not None


# ---------------------------------------------------------------- metrics


def exposed_metric_names() -> list[str]:
    """Every metric as Prometheus shows it: counters with ``_total``."""
    names = []
    for family in Metrics().registry.collect():
        names.append(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_every_metric_is_documented_in_the_metrics_table():
    table = section(read("metrics.md"), "Every metric")
    names = exposed_metric_names()
    assert len(names) >= 20
    missing = [name for name in names if not in_code(table, name)]
    assert missing == [], f"metrics not in docs/metrics.md: {missing}"


def test_documented_metrics_exist():
    table = section(read("metrics.md"), "Every metric")
    documented = set(re.findall(r"^\| `(recstream_\w+)` \|", table, re.M))
    assert documented == set(exposed_metric_names())


# ---------------------------------------------------------------- settings


def test_every_environment_variable_is_documented():
    docs = all_docs()
    variables = [*settings._ENV.values(), *settings._SECURITY_ENV.values()]
    assert "RECSTREAM_BROKER" in variables
    missing = [var for var in variables if not mentions(docs, var)]
    assert missing == [], f"environment variables not in docs/: {missing}"


def test_documented_environment_variables_exist():
    cli = read("cli.md")
    known = {*settings._ENV.values(), *settings._SECURITY_ENV.values()}
    documented = set(re.findall(r"`(RECSTREAM_\w+)`", cli))
    # The flags of new settings may be documented before their code lands.
    announced = {
        "RECSTREAM_TOWERS",
        "RECSTREAM_TASK_WEIGHTS",
        "RECSTREAM_TASK_WEIGHTING",
        "RECSTREAM_TORCH_THREADS",
    }
    assert documented - known - announced == set()


# ---------------------------------------------------------------- command line


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("recstream",)
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(``recstream bench quality``, its parser) for every leaf subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = list(commands(sub, (*path, name)))
                yield from nested or [(" ".join((*path, name)), sub)]


def test_every_subcommand_is_documented():
    cli = read("cli.md")
    found = dict(commands(build_parser()))
    assert "recstream bench quality" in found and "recstream worker" in found
    missing = [name for name in found if f"### `{name}`" not in cli]
    assert missing == [], f"commands without a section in docs/cli.md: {missing}"


def test_every_flag_is_documented():
    cli = read("cli.md")
    missing = sorted(
        {
            f"{name} {option}"
            for name, parser in commands(build_parser())
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help" and not mentions(cli, option)
        }
    )
    assert missing == [], f"flags not in docs/cli.md: {missing}"


# ---------------------------------------------------------------- contract


def reasons_raised_in_contract() -> set[str]:
    """Reason literals of every ``InvalidRecord(...)`` in producers/contract.py."""
    tree = ast.parse(Path(contract.__file__).read_text(encoding="utf-8"))
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "InvalidRecord"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def test_every_dead_letter_reason_is_documented():
    text = section(read("contracts.md"), "Event")
    reasons = set(contract.REASONS) | reasons_raised_in_contract()
    assert {"not_json", "bad_price", "duplicate"} <= reasons
    table = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    assert reasons <= table, f"reasons not in docs/contracts.md: {sorted(reasons - table)}"
    metric_labels = section(read("metrics.md"), "Label values")
    missing = [reason for reason in reasons if not in_code(metric_labels, reason)]
    assert missing == [], f"reasons not among the metric labels: {missing}"


def test_every_event_and_catalog_field_is_documented():
    full = Event(
        "e1",
        1_732_240_000_000,
        "click",
        "u1",
        "i1",
        ItemContent("a.b", "acme", 1.0),
        "s1",
        {"device": "mobile"},
    )
    event_fields = {*contract.event_to_dict(full), *contract.event_to_dict(full)["item"]}
    catalog_fields = set(contract.catalog_to_dict(CatalogItem("i1", 0, "a.b", "acme", 1.0, False)))
    docs = read("contracts.md")
    event_doc, catalog_doc = section(docs, "Event"), section(docs, "Catalog")
    assert [f for f in sorted(event_fields) if not in_code(event_doc, f)] == []
    assert [f for f in sorted(catalog_fields) if not in_code(catalog_doc, f)] == []


def test_every_score_field_is_documented():
    class Fixed(Learner):
        model_version = 3

        def predict(self, samples, remembered=None):
            return np.array([[0.5, 0.1, 0.02]] * len(samples))

        def is_cold(self, item_id):
            return True

    ranker = Ranker(RankingConfig(top_k=1, cold_slots=0))
    candidates = {"u1": [("i1", ItemContent("a.b", "x", 1.0))]}
    record = ranker.rank(Fixed(), candidates, {"u1": 1}, now_ms=2)[0]
    fields = {*record, *record["items"][0]}
    text = section(read("contracts.md"), "Scores")
    assert [f for f in sorted(fields) if not in_code(text, f)] == []


def test_every_dead_letter_field_is_documented():
    letter = DeadLetter(b"u1", "not_json", "not JSON", b"x", "events", 0, 7)
    fields = set(json.loads(letter.to_json()))
    text = section(read("contracts.md"), "Dead letters")
    assert [f for f in sorted(fields) if not in_code(text, f)] == []


# ---------------------------------------------------------------- links


def repository_files() -> list[Path]:
    """Tracked files, and new ones not ignored, outside .venv."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = [name for name in listed.decode().split("\0") if name]
    return [ROOT / name for name in names if not name.startswith(".venv/")]


def test_no_file_points_outside_the_repository_at_the_team_folder():
    outside = "/".join(("..", "shared"))  # spelled so that this file does not match itself
    offenders = []
    for path in repository_files():
        if path.is_file() and outside.encode() in path.read_bytes():
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize(
    "document", ["README.md", *(f"docs/{p.name}" for p in sorted(DOCS.glob("*.md")))]
)
def test_links_stay_in_the_repository_and_resolve(document):
    path = ROOT / document
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        assert "://" not in target, f"{document} links outside: {target}"
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.is_relative_to(ROOT), f"{document} links outside: {target}"
        assert linked.exists(), f"{document}: {target} does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            assert anchor in {slug(h) for h in headings}, f"{document}: no anchor {target}"
