"""CI's short fuzzing run: every harness in fuzz/ over its committed corpus, then a mutation budget.

The corpus (fuzz/corpus/<target>/) holds the seeds made from the real vectors (``seed-*``), small
inputs that atheris runs kept for their coverage (``cov-*``) and every input that ever found a bug
(``regress-*``), so each finding stays a regression test. The budget uses
the pure-Python driver with a fixed seed (no atheris needed; ``fuzz/run`` does the long,
coverage-guided runs). The whole file takes about a minute.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from fuzz import der_tree, mutators
from fuzz.driver import corpus, fuzz, run_one
from fuzz.targets import TARGETS

#: Seconds of mutation per harness after the corpus replay.
BUDGET = 3.0
#: Harnesses of parsers that another change fixes; the committed finding must fail until then.
FIXED_ELSEWHERE: dict[str, str] = {}


def _params() -> list[object]:
    return [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=FIXED_ELSEWHERE[name]))
            if name in FIXED_ELSEWHERE else name for name in TARGETS]


@pytest.mark.parametrize("name", _params())
def test_harness_raises_only_typed_errors_in_time(name: str) -> None:
    target = TARGETS[name]
    findings, runs = fuzz(target, seconds=BUDGET, seed=16)
    assert runs > len(corpus(target)), f"{name}: the mutation budget ran no input"
    assert not findings, f"{name}: {len(findings)} findings in {runs} inputs; first: {findings[0].reason}"


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_harness_has_seeds_from_the_vectors(name: str) -> None:
    seeds = [data for data in corpus(TARGETS[name]) if data]
    assert len(seeds) >= 2, f"{name}: expected a committed corpus in fuzz/corpus/{name}/"


def test_the_corpus_keeps_each_finding_of_issue_18() -> None:
    """One committed input per class the fuzzing found (PEM backtracking, huge integers, quadratic
    scans, metadata sizes); each must now run clean and fast."""
    names = ("pem", "certtable", "evidence", "x509", "der", "crl", "exchange", "manifest", "measure")
    found = {name: [p for p in TARGETS[name].corpus.iterdir() if p.name.startswith("regress-")]
             for name in names}
    assert all(found.values()), {name: len(paths) for name, paths in found.items()}
    for name, paths in found.items():
        for path in paths:
            assert run_one(TARGETS[name], path.read_bytes()) is None, path.name


# -- the mutators reach the classes issue 18 §9 names ------------------------------------------------
def _reaches(mutate: mutators.Mutator, seed: bytes, predicate: Callable[[bytes], bool],
             max_size: int = 64 * 1024, tries: int = 3000) -> bool:
    rng = random.Random(18)
    return any(predicate(mutate(seed, rng, max_size)) for _ in range(tries))


def _vcek() -> bytes:
    return next(p for p in TARGETS["x509"].corpus.iterdir() if p.name.startswith("seed-")).read_bytes()


def test_der_mutator_grows_integers_past_the_int_to_str_limit() -> None:
    def huge_integer(data: bytes) -> bool:
        nodes = der_tree.parse(data) or []
        return any(n.tag == 0x02 and len(n.content) >= 2000 for n in der_tree.walk(nodes))

    assert _reaches(mutators.mutate_der, _vcek(), huge_integer)


def test_der_mutator_grows_oid_arcs() -> None:
    def huge_arc(data: bytes) -> bool:
        nodes = der_tree.parse(data) or []
        return any(n.tag == 0x06 and b"\xff" * 64 in n.content for n in der_tree.walk(nodes))

    assert _reaches(mutators.mutate_der, _vcek(), huge_arc)


def test_pem_mutator_makes_long_whitespace_runs_inside_and_without_end() -> None:
    pem = mutators.pem(_vcek())

    def run_inside(data: bytes) -> bool:
        return data.count(b"-----END") == 1 and any(ch * 10_000 in data for ch in (b" ", b"\n", b"\t"))

    def run_without_end(data: bytes) -> bool:
        return b"-----END" not in data and b" " * 10_000 in data

    assert _reaches(mutators.mutate_pem, pem, run_inside)
    assert _reaches(mutators.mutate_pem, pem, run_without_end)


def test_json_mutator_makes_many_distinct_numbers_and_deep_nesting() -> None:
    seed = b'{"a": {"ports": [443, 8443]}}'

    def many_ports(data: bytes) -> bool:
        return data.count(b",") > 20_000 and b"60000" in data

    assert _reaches(mutators.mutate_json, seed, many_ports, max_size=1024 * 1024)
    assert _reaches(mutators.mutate_json, seed, lambda data: data.startswith(b"[" * 1000))


def test_http_mutator_repeats_header_lines_and_long_digits() -> None:
    seed = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    assert _reaches(mutators.mutate_http, seed, lambda data: data.count(b"\r\n") > 1000)
    assert _reaches(mutators.mutate_http, seed, lambda data: b"9" * 4000 in data)
