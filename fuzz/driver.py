"""A pure-Python fuzzing driver: replays a corpus and mutates it with the structure-aware mutators.

It needs no atheris, so the CI smoke test (tests/test_fuzz_smoke.py) runs every harness with it,
and ``fuzz/run`` falls back to it when atheris is not installed. It has no coverage feedback;
atheris (``fuzz/atheris_main.py``) has. Every finding is an input and a reason: an exception
outside the harness's typed errors, or a run longer than its time bound.
"""

from __future__ import annotations

import hashlib
import random
import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fuzz.targets import Target


class _Hang(BaseException):
    """Raised by the alarm inside a harness that overran its hard limit."""


@dataclass(frozen=True)
class Finding:
    target: str
    data: bytes
    reason: str

    @property
    def name(self) -> str:
        return f"{self.target}-{hashlib.sha256(self.data).hexdigest()[:16]}"

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.name
        path.write_bytes(self.data)
        path.with_suffix(".txt").write_text(self.reason)
        return path


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt the harness after ``seconds`` of CPU time (ITIMER_PROF: other processes' load does
    not count, and pytest-timeout's wall-clock SIGALRM is left alone)."""
    def fire(signum: int, frame: object) -> None:
        raise _Hang()

    previous = signal.signal(signal.SIGPROF, fire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def run_one(target: Target, data: bytes) -> Finding | None:
    """Run ``target`` on ``data``: None if it returned or raised one of its typed errors in time."""
    start = time.process_time()  # CPU time: what super-linear code costs, whatever else runs
    try:
        with _alarm(target.bound * 5):
            target.run(data)
    except _Hang:
        return Finding(target.name, data, f"hang: still running after {target.bound * 5:g} s of CPU time")
    except target.allowed:
        pass
    except Exception as exc:  # every other exception is what fuzzing looks for
        return Finding(target.name, data, f"untyped {type(exc).__name__}: {exc!s:.300}\n"
                                           + "".join(traceback.format_exception(exc))[-3000:])
    elapsed = time.process_time() - start
    if elapsed > target.bound:
        return Finding(target.name, data, f"slow: {elapsed:.2f} s of CPU time (bound {target.bound:g} s)")
    return None


def corpus(target: Target) -> list[bytes]:
    """The committed corpus of ``target`` (seeds from the real vectors, then regression inputs)."""
    if not target.corpus.is_dir():
        return []
    return [path.read_bytes() for path in sorted(target.corpus.iterdir()) if path.is_file()]


def mutate(target: Target, data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        data = rng.choice(target.mutators)(data, rng, target.max_size)
    return data[: target.max_size]


def fuzz(target: Target, *, seconds: float | None = None, iterations: int | None = None,
         seed: int = 0, stop_at_first: bool = False) -> tuple[list[Finding], int]:
    """Replay the corpus, then mutate it until ``seconds`` or ``iterations`` run out.

    Returns the findings and the number of inputs run. Mutated inputs join the pool with a small
    probability, so mutations stack (a grown integer inside a grown nesting...).
    """
    rng = random.Random(seed)
    findings: list[Finding] = []
    pool = corpus(target) or [b""]
    runs = 0
    for data in list(pool):
        runs += 1
        if (finding := run_one(target, data)) is not None:
            findings.append(finding)
            if stop_at_first:
                return findings, runs
    deadline = time.monotonic() + seconds if seconds is not None else None
    last = runs + iterations if iterations is not None else None
    while (last is None or runs < last) and (deadline is None or time.monotonic() < deadline):
        data = mutate(target, rng.choice(pool), rng)
        runs += 1
        if (finding := run_one(target, data)) is not None:
            findings.append(finding)
            if stop_at_first:
                break
        elif rng.random() < 0.05 and len(pool) < 2000:
            pool.append(data)
    return findings, runs
