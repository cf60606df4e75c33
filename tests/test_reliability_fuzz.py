"""The fuzz set (`tests/fuzz_cases.py`): every bad input is refused by the caller's own index before any model work,
and no result is silently wrong (issue 19)."""

from __future__ import annotations

import pytest

from fuzz_cases import CASES, classify, tiny_encoder, write_files


@pytest.fixture(scope="module")
def encoder_and_counter():
    return tiny_encoder()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_files(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize(
    "case, mode",
    [(case, mode) for case in CASES for mode in case.modes],
    ids=[f"{case.name} [{mode}]" for case in CASES for mode in case.modes],
)
def test_fuzz_case(case, mode, encoder_and_counter, files):
    encoder, counter = encoder_and_counter
    outcome, detail = classify(case, encoder, counter, files, mode)
    assert outcome == ("clear error" if case.error else "handled"), detail


def test_the_counter_sees_model_work(encoder_and_counter):
    """Guards the fuzz set's own instrument: a valid call is counted."""
    encoder, counter = encoder_and_counter
    counter.calls = 0
    encoder.encode(["a red car", "a blue bus"])
    assert counter.calls == 1
    encoder.encode(["a red car"], mode="gen", max_new_tokens=2)
    assert counter.calls > 1
