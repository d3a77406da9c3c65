"""Fuzzing harnesses for every BlindBox parser of untrusted bytes (see ``fuzz/run`` and docs/threat-model.md).

``targets`` names each harness, the typed errors it may raise and its seeds; ``mutators`` holds the
structure-aware mutations (DER, PEM, JSON, HTTP) that grow integers, lengths, OID arcs, nesting and
whitespace runs; ``driver`` runs a harness without atheris (the CI smoke test and a fallback);
``atheris_main`` runs one harness under atheris (libFuzzer, coverage-guided).
"""
