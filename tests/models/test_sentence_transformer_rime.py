"""The sentence-transformers module under sentence-transformers' own calls: errors that name the caller's item
although `encode` sorts by length, `max_seq_length`, per-item token embeddings, the modalities that mteb reads
(through mteb's own code) and the model card that `SentenceTransformer.save` writes after training."""

from __future__ import annotations

import json
import os
import shutil

import jinja2
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from transformers_rime import RimeEncoder
from transformers_rime.export import SENTENCE_TRANSFORMERS_MODALITY_CONFIG, SENTENCE_TRANSFORMERS_MODULE_CONFIG
from transformers_rime.models.rime.sentence_transformer_rime import (
    LEGACY_CONFIG_FILE_NAME,
    MODALITY_CONFIG,
    TRAINED_NOTE,
    RimeSentenceTransformerModule,
    card_template,
)
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor


ITEMS = ["ok", "x" * 50, "/no/such.png", "short"]  # sorted by length, the bad item (caller index 2) comes second


@pytest.fixture(scope="module")
def encoder():
    processor = tiny_rime_processor()
    return RimeEncoder(tiny_rime_model(processor=processor, max_new_tokens=4), processor)


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "rime-tiny"
    encoder.save_pretrained(path)  # with its model card
    return path


@pytest.fixture(scope="module")
def st_model(exported):
    return SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")


class ForwardCounter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *args):
        self.calls += 1


# ----------------------------------------------------------------------------- errors name the caller's index


@pytest.mark.parametrize("batch_size", [32, 2, 1])
def test_errors_name_the_callers_index_although_encode_sorts_by_length(st_model, batch_size):
    counter = ForwardCounter(st_model[0].model)
    try:
        with pytest.raises(FileNotFoundError, match=r"^input 2: image file not found: /no/such\.png"):
            st_model.encode(ITEMS, batch_size=batch_size)
    finally:
        counter.handle.remove()
    assert counter.calls == 0  # every item was checked, in the caller's order, before any model work


def test_the_first_bad_item_in_the_callers_order_is_named(st_model):
    with pytest.raises(ValueError, match=r"^input 1: empty text"):
        st_model.encode_document(["a red car", " ", "x" * 40, "/no/such.png"], batch_size=1)


def test_prompt_length_errors_name_the_callers_index(st_model):
    lengths = [st_model[0].preprocess([item])["input_ids"].shape[1] for item in ("x" * 50, "ok", "short")]
    st_model.max_seq_length = lengths[0] - 1  # only the long item (caller index 1, first once sorted) is too long
    try:
        with pytest.raises(ValueError, match=rf"^input 1: the prompt is {lengths[0]} tokens, longer than max_length"):
            st_model.encode(["ok", "x" * 50, "short"], batch_size=1)
    finally:
        st_model.max_seq_length = None


def test_direct_preprocess_names_its_own_rows(st_model):
    with pytest.raises(FileNotFoundError, match=r"^input 1: image file not found"):
        st_model[0].preprocess(["ok", "/no/such.png"])


def test_mapping_back_keeps_every_embedding_in_the_callers_order(st_model, encoder):
    items = ["a much longer sentence about a red car on a street", "car", random_image(40, 56, seed=2), "a bike"]
    ours = st_model.encode(items, batch_size=2)
    np.testing.assert_allclose(ours, encoder.encode(items, role="query"), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- max_seq_length


def test_max_seq_length_is_the_backbone_context_unless_set(st_model, exported, encoder):
    context = encoder.model.config.get_text_config().max_position_embeddings
    assert isinstance(context, int) and context > 0
    assert st_model.max_seq_length == context
    assert json.loads((exported / SENTENCE_TRANSFORMERS_MODULE_CONFIG).read_text())["max_seq_length"] == context
    module = RimeSentenceTransformerModule(encoder.model, encoder.processor)
    assert module.max_seq_length == context and module.get_config_dict()["max_seq_length"] is None
    module.max_seq_length = 16
    assert module.max_seq_length == 16 and module.get_config_dict()["max_seq_length"] == 16
    module.max_seq_length = None
    assert module.max_seq_length == context
    with pytest.raises(ValueError, match="positive integer"):
        module.max_seq_length = 0


# ----------------------------------------------------------------------------- token embeddings


def test_token_embeddings_are_each_items_own_rows(st_model):
    items = ["car", "a much longer sentence about a red car on a street"]
    tokens = st_model.encode(items, output_value="token_embeddings")
    for item, rows in zip(items, tokens):
        alone = st_model[0].preprocess([item])  # one item: no padding at all
        assert rows.shape == (alone["input_ids"].shape[1], st_model.get_embedding_dimension())
        with torch.no_grad():
            reference = st_model[0].model(**alone).last_hidden_state[0]
        torch.testing.assert_close(rows, reference, atol=1e-4, rtol=0)


def test_forward_leaves_its_input_features_unchanged(st_model):
    features = st_model[0].preprocess(["car", "a much longer sentence about a red car"])
    before = {name: value.clone() for name, value in features.items() if isinstance(value, torch.Tensor)}
    with torch.no_grad():
        out = st_model[0](features)
    for name, value in before.items():
        assert torch.equal(features[name], value), name
    assert "token_embeddings" not in features
    assert out["attention_mask"][:, 0].all()  # own tokens first, padding last
    assert torch.equal(out["attention_mask"].sum(1), before["attention_mask"].sum(1))


def test_token_embeddings_in_gen_mode_are_refused_clearly(st_model):
    counter = ForwardCounter(st_model[0].model)
    try:
        with pytest.raises(ValueError, match="needs mode='disc'"):
            st_model.encode(["car"], output_value="token_embeddings", mode="gen", max_new_tokens=2)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


# ----------------------------------------------------------------------------- modalities (mteb)


def test_the_export_declares_its_modalities_where_mteb_and_sentence_transformers_read_them(exported, st_model):
    config = json.loads((exported / SENTENCE_TRANSFORMERS_MODULE_CONFIG).read_text())
    assert set(config["modality_config"]) == {"text", "image", "video"}
    assert config["modality_config"] == MODALITY_CONFIG == SENTENCE_TRANSFORMERS_MODALITY_CONFIG
    assert RimeSentenceTransformerModule.config_file_name == SENTENCE_TRANSFORMERS_MODULE_CONFIG
    assert {"text", "image", "video"} <= set(st_model.modalities)
    assert st_model[0].get_config_dict()["modality_config"] == MODALITY_CONFIG  # kept by SentenceTransformer.save


@pytest.fixture
def hub_cache(exported, tmp_path, monkeypatch):
    """The export as the Hub repo `rime-test/rime-tiny` in an offline Hugging Face cache (as a download leaves it)."""
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--rime-test--rime-tiny"
    shutil.copytree(exported, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    return "rime-test/rime-tiny"


def test_mteb_reads_image_and_video_modalities_and_hands_images_over(hub_cache, st_model):
    from datasets import Dataset
    from mteb import get_task
    from mteb.models import SentenceTransformerEncoderWrapper
    from mteb.models.model_meta import ModelMeta
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

    # what mteb.get_model / ModelMeta.from_hub run on a Hub id: the files say which wrapper and which modalities
    loader, model_type, modalities = ModelMeta._detect_model_type_and_loader(hub_cache)
    assert loader is SentenceTransformerEncoderWrapper and model_type == "dense"
    assert modalities == ["image", "text", "video"]

    # the wrapper then gets that meta (as ModelMeta.load_model sets it) and passes images on to RIME
    wrapper = loader(hub_cache, device="cpu", trust_remote_code=True)
    wrapper.mteb_model_meta = ModelMeta.create_empty(overwrites={"name": hub_cache, "modalities": modalities})
    texts, images = ["a red car", "a cat"], [random_image(40, 56, seed=4), random_image(48, 32, seed=5)]
    rows = Dataset.from_dict({"text": texts, "image": images})
    batches = DataLoader(rows, batch_size=1, collate_fn=lambda batch: {k: [row[k] for row in batch] for k in batch[0]})
    metadata = get_task("VidoreArxivQARetrieval").metadata  # an image retrieval task (only its metadata is used)
    ours = wrapper.encode(
        batches, task_metadata=metadata, hf_split="test", hf_subset="default", prompt_type=PromptType.document
    )
    reference = st_model.encode_document([{"text": t, "image": i} for t, i in zip(texts, images)])
    np.testing.assert_allclose(np.asarray(ours), reference, atol=1e-5, rtol=0)
    assert not np.allclose(reference, st_model.encode_document(texts), atol=1e-3)  # the images count


def test_an_export_with_the_old_settings_file_still_loads(exported, tmp_path, st_model):
    old = tmp_path / "old-export"
    shutil.copytree(exported, old)
    os.remove(old / SENTENCE_TRANSFORMERS_MODULE_CONFIG)
    settings = {"mode": "gen", "max_new_tokens": 3, "max_seq_length": None}
    (old / LEGACY_CONFIG_FILE_NAME).write_text(json.dumps(settings))
    st = SentenceTransformer(str(old), trust_remote_code=True, device="cpu")
    assert (st[0].mode, st[0].max_new_tokens) == ("gen", 3)
    assert st.max_seq_length == st_model.max_seq_length


# ----------------------------------------------------------------------------- the model card after training


def test_card_template_renders_the_card_verbatim_then_the_training_section():
    card = "---\nlicense: x\n---\n# A {{ card }} {% if %} with {% endraw %} inside\n"
    st_template = "# {{ model_name }}\n## Training Details\n{{ hyperparameters }}\n## Additional Resources\nmore\n"
    text = jinja2.Template(card_template(card, st_template)).render(hyperparameters="lr=1")
    assert text.startswith(card.rstrip("\n"))
    assert text.endswith(f"\n\n## Training Details\n\n{TRAINED_NOTE}\nlr=1")
    assert "Additional Resources" not in text and "model_name" not in text
    # a card that was already trained once keeps one training section: the last run's
    again = jinja2.Template(card_template(text, st_template)).render(hyperparameters="lr=2")
    assert again.count("## Training Details") == 1 and again.endswith("lr=2")
    assert jinja2.Template(card_template(card, "no section")).render() == card.rstrip("\n")


def test_saving_after_training_keeps_the_models_card(exported, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    card = (exported / "README.md").read_text()
    assert card.startswith("---") and "RIME" in card
    st = SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")
    st.save(str(tmp_path / "untrained"))
    assert (tmp_path / "untrained" / "README.md").read_text().rstrip("\n") == card.rstrip("\n")

    data = Dataset.from_dict({"anchor": ["a red car", "a cat"], "positive": ["red sports car", "kitten"]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True
    )
    trainer = SentenceTransformerTrainer(
        model=st, args=args, train_dataset=data, loss=MultipleNegativesRankingLoss(st)
    )
    trainer.train()
    for _ in range(2):  # saving twice writes the same card
        st.save(str(tmp_path / "trained"))
        saved = (tmp_path / "trained" / "README.md").read_text()
        assert saved.startswith(card.rstrip("\n"))  # the RIME card, verbatim
        assert f"## Training Details\n\n{TRAINED_NOTE}" in saved and "MultipleNegativesRankingLoss" in saved
        assert "This is a [sentence-transformers](https://www.SBERT.net) model" not in saved  # not the generic card
    reloaded = SentenceTransformer(str(tmp_path / "trained"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(reloaded.encode_query(["a red car"]), st.encode_query(["a red car"]), atol=1e-5, rtol=0)
