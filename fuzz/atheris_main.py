"""Run one harness under atheris: ``python -m fuzz.atheris_main TARGET [libFuzzer args...]``.

Every BlindBox module is instrumented for coverage; the custom mutator mixes libFuzzer's byte
mutations with the structure-aware ones of :mod:`fuzz.mutators`. An exception outside the
harness's typed errors is a crash; libFuzzer's ``-timeout`` catches hangs, and an input slower
than the harness's bound is reported as a crash too.
"""

from __future__ import annotations

import random
import sys
import time

import atheris

from fuzz import driver
from fuzz.targets import TARGETS


def main() -> None:
    name = sys.argv.pop(1)
    target = TARGETS[name]
    for data in driver.corpus(target):  # import every module the harness reaches, then instrument
        driver.run_one(target, data)
    atheris.instrument_all()

    def test_one_input(data: bytes) -> None:
        start = time.process_time()
        try:
            target.run(data)
        except target.allowed:
            pass
        elapsed = time.process_time() - start
        if elapsed > target.bound:
            raise RuntimeError(f"slow input: {elapsed:.2f} s of CPU time (bound {target.bound:g} s)")

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.3:
            return bytes(atheris.Mutate(data, max_size))
        return driver.mutate(target, data, rng)[:max_size]

    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
