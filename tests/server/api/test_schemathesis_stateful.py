"""Schemathesis, stateful: sequences of requests that follow the document's OpenAPI links, with
every check on every answer, against real brokers on real sockets.

A set is followed by a read, touch, incr and delete of the key it named; a lease grant by a
renew, a release (with the grant's fencing token) and a listing of its pool. Schemathesis also
follows the links it infers (from a key listing to each key operation). The test fails unless
every declared link was followed with the values it carries, and answered with success at
least once: a run that never reached a linked operation proves nothing.

Two state machines, one per family of linked operations, each on a document with only that
family's paths: schemathesis starts scenarios only from the operations it deems likely to
succeed, and on the whole document that is the key listing alone, so no scenario would ever
acquire a lease.

Every scenario gets a broker with no history (tests/support/forked_brokers.py, a fork per
scenario on a clock that never moves): Hypothesis replays the start of earlier scenarios and
needs the same requests to get the same answers, which a broker that kept the keys, tokens
and version counter of the last scenario, or whose TTLs run out by the wall clock, would not
give.

Bounded for CI: derandomized, SCENARIOS scenarios of at most STEPS steps per family.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.core.errors import format_transition
from schemathesis.core.failures import FailureGroup
from schemathesis.core.transport import Response
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput
from schemathesis.openapi.checks import RejectedPositiveData, UseAfterFree

from ephemeral_broker.api.openapi_rules import NAME_PATTERN
from tests.support.brokers import read_first_line
from tests.support.paths import ROOT
from tests.support.schemathesis_cases import CONFIG, send, shorten_waits

SCENARIOS = 30
STEPS = 10
START_TIMEOUT_SECONDS = 30.0  # the factory's own wait is 20 s
FAMILIES = {"keys": "/v1/keys", "leases": "/v1/leases"}
# The document's name pattern in Python (in JSON Schema, `$` never matches before a newline).
NAME = re.compile(NAME_PATTERN.replace("$", r"\Z"))


class BrokerFactory:
    """A `python -m tests.support.forked_brokers` process: `fresh()` ends the broker it gave
    out last and returns the socket of a new one."""

    def __init__(self, workdir: Path) -> None:
        self.stderr_path = workdir / "brokers.stderr"
        self.started = 0
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.forked_brokers", str(workdir)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )

    def fresh(self) -> Path:
        assert self.proc.stdin is not None
        self.started += 1
        self.proc.stdin.write("next\n")
        self.proc.stdin.flush()
        try:
            line = read_first_line(self.proc, START_TIMEOUT_SECONDS)
        except TimeoutError:
            line = "(nothing)"
        assert line.startswith("EPHEMERAL_PIPE="), (line, self.stderr())
        return Path(line.removeprefix("EPHEMERAL_PIPE=").split()[0])

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        """End of stdin ends the brokers and the factory; SIGTERM (by pid) does the same if it
        lingers."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def brokers() -> Iterator[BrokerFactory]:
    workdir = Path(tempfile.mkdtemp(prefix="eb-sf-", dir="/tmp"))  # short: socket paths
    factory = BrokerFactory(workdir)
    try:
        yield factory
    finally:
        factory.close()
        shutil.rmtree(workdir, ignore_errors=True)


def family_document(prefix: str) -> dict[str, Any]:
    """`openapi.json` with only the paths under `prefix` (its components whole)."""
    document: dict[str, Any] = json.loads((ROOT / "openapi.json").read_text())
    document["paths"] = {
        path: item
        for path, item in document["paths"].items()
        if path == prefix or path.startswith(prefix + "/")
    }
    return document


Link = tuple[str, str, str]  # (source operation, link name, target operation)


def declared_links(document: dict[str, Any]) -> dict[str, Link]:
    """Every link `document` declares, by the id schemathesis gives a transition along it
    (one per status the link is declared on)."""
    labels = {
        operation["operationId"]: f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "operationId" in operation
    }
    return {
        format_transition(source, status, name, labels[link["operationId"]]): (
            source,
            name,
            labels[link["operationId"]],
        )
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for source in [f"{method.upper()} {path}"]
        for status, response in operation["responses"].items()
        for name, link in response.get("links", {}).items()
    }


@dataclass
class Followed:
    """What a run did: calls per operation, and per followed link the statuses it got."""

    calls: Counter[str] = field(default_factory=Counter)
    links: dict[Link, Counter[int]] = field(default_factory=dict)
    recreated_by_incr: int = 0  # reads of a key an incr created after its delete
    invalid_names_refused: int = 0  # "valid" names that break the document's pattern


# One TLS context for every client: httpx builds one per transport otherwise, which costs a
# read of the CA bundle (tens of ms) for each scenario, and these clients never use TLS.
NO_TLS = ssl.create_default_context()


def run_family(brokers: BrokerFactory, document: dict[str, Any], scenarios: int) -> Followed:
    """Run the state machine of `document` for `scenarios` scenarios; what it followed."""
    # A copy: schemathesis writes the links it infers into the document it is given.
    schema = schemathesis.openapi.from_dict(copy.deepcopy(document), config=CONFIG)
    followed = Followed()
    links = declared_links(document)

    class Scenario(schema.as_state_machine()):  # type: ignore[misc]
        """One scenario: a fresh broker, requests sent over its socket."""

        client: httpx.Client
        # Keys an incr has created since their last delete: see validate_response.
        recreated: set[str]

        def setup(self) -> None:
            transport = httpx.HTTPTransport(uds=str(brokers.fresh()), verify=NO_TLS)
            self.client = httpx.Client(transport=transport, base_url="http://localhost", timeout=30)
            self.recreated = set()

        def teardown(self) -> None:
            self.client.close()

        def call(self, case: Any, **kwargs: Any) -> Response:
            shorten_waits(case)
            followed.calls[case.operation.label] += 1
            response = send(self.client, case)
            label = case.operation.label
            if response.is_success and label == "DELETE /v1/keys/{key}":
                self.recreated.discard(case.path_parameters["key"])
            elif response.is_success and label == "POST /v1/keys/{key}/incr":
                self.recreated.add(case.path_parameters["key"])
            return Response.from_httpx(response, verify=True)

        def validate_response(
            self, response: Response, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            """Every check, with two corrections, each confirmed here before it is applied:

            - schemathesis takes a key as re-created after a delete only by a write to the
              key's own path (a PUT), but an incr creates the key it names too (at 0, with
              its ttl_ms): a read that finds a key an incr created since its delete is not a
              use after free;
            - its ASCII codec now and then generates a name with a control character or a
              space, which the document's name pattern forbids, as "valid" data: the refusal
              of a name that does not match the pattern is right.

            Any other failure, or one of these without its confirmation, stands."""
            try:
                super().validate_response(response, case, additional_checks, **kwargs)
            except FailureGroup as group:
                params = {name: unquote(str(v)) for name, v in (case.path_parameters or {}).items()}
                for failure in group.exceptions:
                    if isinstance(failure, UseAfterFree) and params.get("key") in self.recreated:
                        followed.recreated_by_incr += 1
                    elif isinstance(failure, RejectedPositiveData) and any(
                        not NAME.match(value) for value in params.values()
                    ):
                        followed.invalid_names_refused += 1
                    else:
                        raise

        def step(self, input: StepInput) -> StepOutput:
            output: StepOutput = super().step(input)
            transition = input.transition
            # Followed means: reached through a link, with the link's values in the request.
            if transition is not None and transition.id in links and input.is_applied:
                statuses = followed.links.setdefault(links[transition.id], Counter())
                statuses[output.response.status_code] += 1
            return output

    Scenario.run(
        settings=settings(
            max_examples=scenarios,
            stateful_step_count=STEPS,
            derandomize=True,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    return followed


def unreached(document: dict[str, Any], followed: Followed) -> list[str]:
    """Why the run does not show every link of `document` at work, or nothing if it does:
    each link followed with its values, and answered at least once as one that found what the
    values name (a 2xx; for an incr also a 409 `not_an_integer`, the answer for a key that
    exists but holds no integer, which is what a set of a generated value usually leaves)."""
    problems = []
    for link in sorted(set(declared_links(document).values())):
        statuses = followed.links.get(link)
        if not statuses:
            problems.append(f"{link[0]} -> {link[1]} -> {link[2]} was never followed")
        elif not any(200 <= s < 300 or (link[1] == "IncrKey" and s == 409) for s in statuses):
            problems.append(f"{link[1]} never found what it names: {dict(statuses)}")
    return problems


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_linked_operations_hold_to_the_document(brokers: BrokerFactory, family: str) -> None:
    document = family_document(FAMILIES[family])
    assert declared_links(document), f"the document declares no links under {FAMILIES[family]}"
    followed = run_family(brokers, document, SCENARIOS)
    assert not unreached(document, followed), (unreached(document, followed), followed)


def test_a_run_that_follows_no_declared_link_fails(brokers: BrokerFactory) -> None:
    """Without its declared links the keys family still runs (schemathesis follows the links
    it infers from the key listing), and the check above must say which links were missed."""
    document = family_document(FAMILIES["keys"])
    unlinked = copy.deepcopy(document)
    for item in unlinked["paths"].values():
        for operation in item.values():
            for response in operation["responses"].values():
                response.pop("links", None)
    followed = run_family(brokers, unlinked, 5)
    assert sum(followed.calls.values()) > 0
    assert not followed.links
    assert unreached(document, followed) == [
        f"PUT /v1/keys/{{key}} -> {name} -> {target} was never followed"
        for name, target in [
            ("DeleteKey", "DELETE /v1/keys/{key}"),
            ("GetKey", "GET /v1/keys/{key}"),
            ("IncrKey", "POST /v1/keys/{key}/incr"),
            ("TouchKey", "POST /v1/keys/{key}/touch"),
        ]
    ]
