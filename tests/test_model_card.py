"""Model cards: front matter, usage that runs, evaluation tables, the released models' cards, and push_to_hub
against a stand-in that builds the commit but sends nothing."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from transformers_rime import RimeEncoder
from transformers_rime.model_card import create_model_card, load_results, results_table, template_path
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor


REPO = Path(__file__).resolve().parents[1]
USAGE_HEADINGS = ("### With transformers_rime", "### With sentence-transformers", "### With transformers only")
RESULTS = {
    "benchmark": "toy retrieval",
    "metric": "Hit@1",
    "scores": {
        "image": {"disc->disc": 0.5, "gen->disc": 0.625, "disc->gen": 0.25, "gen->gen": 0.75},
        "overall": {"disc->disc": 0.4, "gen->gen": 0.6},
    },
}


@pytest.fixture(scope="module")
def encoder():
    processor = tiny_rime_processor()
    return RimeEncoder(tiny_rime_model(processor=processor, max_new_tokens=4), processor)


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "the card must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_saved_card_has_valid_front_matter_and_usage(encoder, tmp_path):
    encoder.save_pretrained(tmp_path, model_card_kwargs={"base_model": "leafyseay/RIME-2B", "datasets": ["d/x"]})
    text = (tmp_path / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "feature-extraction"
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "leafyseay/RIME-2B"
    assert meta["datasets"] == ["d/x"]
    assert {"sentence-transformers", "rime", "qwen2_vl"} <= set(meta["tags"])
    assert ModelCard.load(tmp_path / "README.md").data.library_name == "transformers"  # the Hub's own parser
    for heading in USAGE_HEADINGS:
        assert heading in text
    config = encoder.model.config
    assert f"| Embedding dimension | {config.hidden_size} " in text
    assert f"| Rewrite budget | {config.max_new_tokens} new tokens" in text
    assert "No evaluation results were given" in text


def test_usage_snippets_run_against_the_exported_directory(encoder, tmp_path, monkeypatch):
    export = tmp_path / "export"
    encoder.save_pretrained(export, model_card_kwargs={"model_id": str(export)})
    blocks = python_blocks((export / "README.md").read_text())
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    random_image(seed=2).save(tmp_path / "photo.jpg")
    for block in blocks:
        namespace: dict = {}
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(block, "<model card>", "exec"), namespace)
        assert printed.getvalue() or "gen" in namespace  # every snippet shows a result


def test_card_lists_evaluation_results_from_a_mapping_or_a_json_file(encoder, tmp_path):
    card = str(create_model_card(encoder.model, encoder.processor, results=RESULTS))
    assert "toy retrieval, Hit@1:" in card
    assert "| image | 0.5 | 0.25 | 0.625 | 0.75 |" in card
    assert "| overall | 0.4 |  |  | 0.6 |" in card
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    assert str(create_model_card(encoder.model, encoder.processor, results=path)) == card


def test_results_table_keeps_only_the_pairs_present():
    assert results_table({"scores": {"a": {"gen->gen": 0.123456}}}) == "| | gen->gen |\n|---|---|\n| a | 0.1235 |"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({}, "non-empty 'scores'"),
        ({"scores": {"a": 0.5}}, "row 'a' must map mode pairs"),
        ({"scores": {"a": {"disc->retrieval": 0.5}}}, "unknown mode pair"),
    ],
)
def test_malformed_results_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        load_results(bad)


def test_base_model_defaults_to_a_hub_id_and_never_to_a_local_path(encoder, tmp_path):
    encoder.model.name_or_path = "leafyseay/RIME-2B"
    try:
        assert (
            front_matter(str(create_model_card(encoder.model, encoder.processor)))["base_model"] == "leafyseay/RIME-2B"
        )
        encoder.model.name_or_path = str(tmp_path)
        assert "base_model" not in front_matter(str(create_model_card(encoder.model, encoder.processor)))
    finally:
        encoder.model.name_or_path = ""


def test_template_is_the_one_in_model_cards():
    assert Path(template_path()).read_text() == (REPO / "model_cards" / "template.md").read_text()


@pytest.mark.parametrize("size, hidden", [("2b", 1536), ("7b", 3584)])
def test_released_model_cards(size, hidden):
    text = (REPO / "model_cards" / f"rime-{size}" / "README.md").read_text()
    meta = front_matter(text)
    assert meta["base_model"] == f"Qwen/Qwen2-VL-{size.upper()}-Instruct"
    assert meta["library_name"] == "transformers" and "sentence-transformers" in meta["tags"]
    for heading in USAGE_HEADINGS:
        assert heading in text
    for block in python_blocks(text):
        ast.parse(block)
    assert f"| Embedding dimension | {hidden} " in text
    assert "No figure on this page was measured by us" in text


# ----------------------------------------------------------------------------- push_to_hub


class RecordingApi(HfApi):
    """A local stand-in for the Hub: records the repository and the commit it is asked for, sends nothing."""

    def __init__(self):
        super().__init__(endpoint="http://127.0.0.1:9", token="hf_test")
        self.repos, self.commits = [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))
        return f"http://127.0.0.1:9/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):
        operations = list(operations)
        uploads = {}
        for op in operations:  # read each upload now, as the real client does, while the temporary folder exists
            with op.as_file() as f:
                uploads[op.path_in_repo] = f.read()
        self.commits.append((repo_id, uploads, operations, kwargs))
        return "commit-info"


def test_push_to_hub_builds_one_commit_with_the_whole_export(encoder, tmp_path):
    api = RecordingApi()
    info = encoder.push_to_hub("me/rime-tiny", private=True, revision="dev", api=api, results=RESULTS)
    assert info == "commit-info"
    assert api.repos == [("me/rime-tiny", {"private": True, "exist_ok": True, "token": None})]
    ((repo_id, uploads, operations, kwargs),) = api.commits
    assert repo_id == "me/rime-tiny"
    assert kwargs["revision"] == "dev" and kwargs["commit_message"] == "Upload RIME model"
    assert all(isinstance(op, CommitOperationAdd) for op in operations)
    encoder.save_pretrained(tmp_path, results=RESULTS, model_card_kwargs={"model_id": "me/rime-tiny"})
    assert set(uploads) == set(os.listdir(tmp_path))
    assert not [name for name in uploads if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    card = uploads["README.md"].decode()
    assert 'SentenceTransformer("me/rime-tiny", trust_remote_code=True)' in card
    assert "| image | 0.5 |" in card
    assert uploads["model.safetensors"] == (tmp_path / "model.safetensors").read_bytes()


def test_push_to_hub_sends_nothing_when_the_hub_is_offline(encoder, monkeypatch):
    from huggingface_hub.errors import OfflineModeIsEnabled

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled):
        encoder.push_to_hub("me/rime-tiny", token="hf_test")
