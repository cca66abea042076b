"""The fuzz tier: >= 2,000 mutated real files through every reader and load_net, in a pool of
worker processes with a per-input time limit and peak-memory check (caffekt.converters.fuzz)."""
from __future__ import annotations

import time

import pytest

from caffekt.converters import fuzz


@pytest.fixture(scope="module")
def seeds():
    return fuzz.build_seeds()


def test_inputs_replay_from_their_number(seeds):
    assert fuzz.make_input(seeds, 3, 1234) == fuzz.make_input(seeds, 3, 1234)
    assert fuzz.make_input(seeds, 3, 1234) != fuzz.make_input(seeds, 4, 1234)
    assert {fuzz.make_input(seeds, 0, i)[0] for i in range(7)} == set(fuzz.KINDS)


def test_fuzz_2000_inputs_no_untyped_hang_or_spike(seeds):
    t = time.perf_counter()
    rep = fuzz.run_fuzz(2000, seed=1, workers=2, time_limit=5.0, seeds=seeds)
    print(rep)
    assert rep.inputs == 2000 and sum(rep.counts.values()) == 2000
    assert rep.bad == 0, str(rep)
    # the inputs reach past the parsers: some build, some are refused by type
    assert rep.counts["ok"] > 200 and rep.counts["typed"] > 200
    assert time.perf_counter() - t < 120


def test_the_harness_sees_each_bad_outcome(seeds, monkeypatch):
    real = fuzz.run_target

    def bad(kind, path):
        if kind == "pt":
            raise KeyError(88069)
        if kind == "solver":
            time.sleep(30)
        if kind == "binaryproto":
            block = bytearray(400 << 20)   # a 400 MiB spike, touched
            block[::4096] = b"x" * len(block[::4096])
        if kind == "safetensors":
            import os
            os._exit(3)
        return real(kind, path)

    monkeypatch.setattr(fuzz, "run_target", bad)   # the forked workers inherit it
    rep = fuzz.run_fuzz(7, seed=0, workers=2, time_limit=2.0, seeds=seeds)
    assert rep.by_kind["pt"]["untyped"] == 1 and rep.by_kind["solver"]["hang"] == 1
    assert rep.by_kind["binaryproto"]["memory"] == 1 and rep.by_kind["safetensors"]["crash"] == 1
    assert rep.bad == 4 and "KeyError" in str(rep)
