"""Exports written by an earlier release still load, and give the embeddings they gave then.

`fixtures/export_v0_1` is a `RimeEncoder.save_pretrained(..., model_card=False)` export of a tiny qwen2_vl model
(seed 3) written before the Hub files were split (one `modeling_rime.py`), with `expected_embeddings.json`: the
`encoder.encode(items, mode=mode, role=role)` of `ITEMS` for every mode and role (gen with `max_new_tokens=6`), as
that release computed them. The fixture is never written to: every test works on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor

from remote_code import run_without_package
from transformers_rime import RimeEncoder
from transformers_rime.models import rime as rime_models


FIXTURE = Path(__file__).parents[1] / "fixtures" / "export_v0_1"
GEN_BUDGET = 6
ATOL = 1e-5


def _items(path: Path) -> list:
    return ["a red car", {"text": "what is shown?", "image": str(path / "item.png")}]


@pytest.fixture(scope="module")
def old_export(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("old") / "export_v0_1"
    shutil.copytree(FIXTURE, path)
    return path


@pytest.fixture(scope="module")
def expected(old_export) -> dict[str, np.ndarray]:
    embeddings = json.loads((old_export / "expected_embeddings.json").read_text())
    return {key: np.asarray(value, dtype=np.float32) for key, value in embeddings.items()}


@pytest.fixture(scope="module")
def encoder(old_export):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield RimeEncoder.from_pretrained(old_export, device="cpu")
    finally:
        torch.set_num_threads(threads)


def test_the_fixture_holds_an_old_single_file_export():
    files = set(os.listdir(FIXTURE))
    assert {"model.safetensors", "configuration_rime.py", "modeling_rime.py", "expected_embeddings.json"} <= files
    assert "generation_rime.py" not in files  # written before the split: the old layout is what is tested


@pytest.mark.parametrize("mode", ["disc", "gen"])
@pytest.mark.parametrize("role", ["query", "document"])
def test_rime_encoder_gives_the_saved_embeddings(encoder, old_export, expected, mode, role):
    kwargs = {"max_new_tokens": GEN_BUDGET} if mode == "gen" else {}
    got = encoder.encode(_items(old_export), mode=mode, role=role, **kwargs)
    np.testing.assert_allclose(got, expected[f"{mode}/{role}"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("role", ["query", "document"])
def test_auto_classes_give_the_saved_disc_embeddings(old_export, expected, role):
    model = AutoModel.from_pretrained(old_export, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(old_export, trust_remote_code=True)
    with torch.no_grad():
        got = model(**processor.process_inputs(_items(old_export), mode="disc", role=role)).embeddings
    np.testing.assert_allclose(got.numpy(), expected[f"disc/{role}"], rtol=0, atol=ATOL)


WITHOUT_PACKAGE = textwrap.dedent(
    """
    import json, sys
    import torch

    torch.set_num_threads(1)
    from transformers import AutoModel, AutoProcessor

    out = {}
    for path in sys.argv[1:]:
        items = ["a red car", {"text": "what is shown?", "image": path + "/item.png"}]
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        for role in ("query", "document"):
            with torch.no_grad():
                disc = model(**processor.process_inputs(items, mode="disc", role=role)).embeddings
            gen = model.generate_embeddings(**processor.process_inputs(items, mode="gen", role=role), max_new_tokens=6)
            out[f"{path}|disc/{role}"] = disc.tolist()
            out[f"{path}|gen/{role}"] = gen.embeddings.tolist()
    assert "transformers_rime" not in sys.modules
    print(json.dumps(out))
    """
)


def test_saved_and_current_remote_code_give_the_saved_embeddings_without_the_package(old_export, expected, tmp_path):
    """The export's own (old) Hub files, and the current ones copied over them (what re-exporting does), both load
    the old weights where `transformers_rime` is not installed, and give the saved embeddings."""
    current = tmp_path / "export_v0_1_current_code"
    shutil.copytree(old_export, current)
    hub_folder = Path(rime_models.__file__).parent
    for source in hub_folder.glob("*_rime.py"):
        shutil.copy(source, current / source.name)
    assert (current / "generation_rime.py").is_file()
    result = run_without_package(WITHOUT_PACKAGE, old_export, current, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for path in (old_export, current):
        for key, value in expected.items():
            np.testing.assert_allclose(np.asarray(got[f"{path}|{key}"]), value, rtol=0, atol=ATOL, err_msg=key)
