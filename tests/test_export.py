"""The exported directory: its files, sentence-transformers loading and equality with RimeEncoder, loaders
without the package, and the version gates of the remote code."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from remote_code import run_without_package
from transformers_rime import RimeEncoder
from transformers_rime.export import SENTENCE_TRANSFORMERS_MODULE_CONFIG
from transformers_rime.models.rime.sentence_transformer_rime import (
    RimeSentenceTransformerModule,
    check_sentence_transformers_version,
)
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.fixture(scope="module")
def encoder():
    processor = tiny_rime_processor()
    return RimeEncoder(tiny_rime_model(processor=processor, max_new_tokens=4), processor)


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "rime-tiny"
    encoder.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "photo.png"
    random_image(40, 56, seed=7).save(path)
    return path


@pytest.fixture(scope="module")
def items(image_path):
    """Every kind of item sentence-transformers hands over: text, PIL image, image path, text+image dict."""
    image = random_image(64, 48, seed=3)
    return ["a red car on a street", image, str(image_path), {"text": "what is shown here?", "image": image}]


@pytest.fixture(scope="module")
def st_model(exported):
    return SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")


def test_exported_directory_holds_every_loaders_files_and_no_pickle(exported, encoder):
    files = set(os.listdir(exported))
    expected = {
        "config.json",
        "model.safetensors",
        "configuration_rime.py",
        "modeling_rime.py",
        "processing_rime.py",
        "inputs_rime.py",
        "processor_config.json",
        "tokenizer.json",
        "modules.json",
        "sentence_transformer_rime.py",
        "config_sentence_transformers.json",
        SENTENCE_TRANSFORMERS_MODULE_CONFIG,
        "README.md",
    }
    assert expected <= files, expected - files
    assert not [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    modules = json.loads((exported / "modules.json").read_text())
    assert modules == [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformer_rime.RimeSentenceTransformerModule"}
    ]
    st_config = json.loads((exported / "config_sentence_transformers.json").read_text())
    assert st_config["similarity_fn_name"] == "cosine"
    assert st_config["prompts"] == {
        "query": encoder.model.config.query_instruction,
        "document": encoder.model.config.document_instruction,
    }
    assert RimeSentenceTransformerModule.config_file_name == SENTENCE_TRANSFORMERS_MODULE_CONFIG


@pytest.mark.parametrize("role", ["query", "document"])
def test_sentence_transformers_equals_encoder_in_disc_mode(st_model, encoder, items, role):
    method = st_model.encode_query if role == "query" else st_model.encode_document
    ours = method(items, batch_size=3)
    reference = encoder.encode(items, mode="disc", role=role)
    assert ours.shape == reference.shape == (len(items), encoder.embedding_dim)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def test_plain_encode_embeds_as_a_query_and_prompts_are_instructions(st_model, encoder, items):
    np.testing.assert_allclose(st_model.encode(items), encoder.encode(items, role="query"), atol=1e-5, rtol=0)
    custom = st_model.encode_query(items[:2], prompt="Find the matching photo:")
    reference = encoder.encode(items[:2], role="query", instruction="Find the matching photo:")
    np.testing.assert_allclose(custom, reference, atol=1e-5, rtol=0)
    # the query and document instructions differ, so the two roles must give different embeddings
    assert not np.allclose(st_model.encode_query(items[:1]), st_model.encode_document(items[:1]))


@pytest.mark.parametrize("role", ["query", "document"])
def test_sentence_transformers_gen_mode_equals_encoder(st_model, encoder, items, role):
    method = st_model.encode_query if role == "query" else st_model.encode_document
    ours = method(items, mode="gen", max_new_tokens=3)
    reference = encoder.encode(items, mode="gen", role=role, max_new_tokens=3)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)
    assert not np.allclose(ours, encoder.encode(items, mode="disc", role=role))


def test_sentence_transformers_refuses_what_rime_cannot_embed(st_model):
    with pytest.raises(ValueError, match="chat-message"):
        st_model.encode([[{"role": "user", "content": "hi"}]])
    with pytest.raises(ValueError, match="Unknown mode 'fast'"):
        st_model.encode(["a red car"], mode="fast")
    with pytest.raises(ValueError, match="input 0: empty text"):
        st_model.encode([" "])
    with pytest.raises(ValueError, match="no `processing_kwargs`"):
        st_model.encode(["a red car"], processing_kwargs={"text": {"truncation": True}})
    st_model.max_seq_length = 8
    try:
        with pytest.raises(ValueError, match="longer than max_length=8"):  # refused, never truncated
            st_model.encode(["a red car"])
    finally:
        st_model.max_seq_length = None


def test_loading_custom_code_needs_trust_remote_code(exported):
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(exported), device="cpu")


def test_gen_mode_refuses_training(st_model):
    st_model.train()
    try:
        with pytest.raises(ValueError, match="no gradient"):
            features = st_model.preprocess(["a red car"], mode="gen")
            st_model(features, mode="gen")
    finally:
        st_model.eval()


def test_sentence_transformers_versions_outside_the_range_are_refused():
    check_sentence_transformers_version("6.0.1")
    check_sentence_transformers_version("6.9.0")
    for version in ("5.4.0", "7.0.0"):
        with pytest.raises(ImportError, match="sentence-transformers>=6.0.1,<7.0.0"):
            check_sentence_transformers_version(version)


# ----------------------------------------------------------------------------- without the package

WITHOUT_PACKAGE = textwrap.dedent(
    """
    import json, sys
    import torch

    torch.set_num_threads(1)
    from PIL import Image
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoProcessor

    path, image_path, resaved = sys.argv[1], sys.argv[2], sys.argv[3]
    image = Image.open(image_path).convert("RGB")
    items = ["a red car on a street", image, image_path, {"text": "what is shown here?", "image": image}]

    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    with torch.no_grad():
        auto = model(**processor.process_inputs(items, mode="disc", role="document")).embeddings

    st = SentenceTransformer(path, trust_remote_code=True, device="cpu")
    out = {
        "auto_class": type(model).__module__,
        "st_module": type(st[0]).__module__,
        "auto_document": auto.tolist(),
        "query": st.encode_query(items).tolist(),
        "document": st.encode_document(items).tolist(),
        "gen_query": st.encode_query(items, mode="gen", max_new_tokens=3).tolist(),
    }
    st.save(resaved)  # sentence-transformers' own save of the remote module
    again = SentenceTransformer(resaved, trust_remote_code=True, device="cpu")
    out["resaved_query"] = again.encode_query(items).tolist()
    assert "transformers_rime" not in sys.modules
    print(json.dumps(out))
    """
)


def test_every_loader_works_without_the_package(exported, encoder, image_path, items, tmp_path):
    result = run_without_package(WITHOUT_PACKAGE, exported, image_path, tmp_path / "resaved", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["auto_class"].startswith("transformers_modules.")
    assert out["st_module"].startswith("transformers_modules.")
    # the subprocess opened the image from disk, as a path item does here
    items = [items[0], str(image_path), str(image_path), {"text": items[3]["text"], "image": str(image_path)}]
    query = encoder.encode(items, role="query")
    document = encoder.encode(items, role="document")
    np.testing.assert_allclose(np.array(out["query"]), query, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(out["document"]), document, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(out["auto_document"]), document, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(out["resaved_query"]), query, atol=1e-5, rtol=0)
    gen = encoder.encode(items, mode="gen", role="query", max_new_tokens=3)
    np.testing.assert_allclose(np.array(out["gen_query"]), gen, atol=1e-5, rtol=0)


UNSUPPORTED_VERSIONS = textwrap.dedent(
    """
    import json, sys
    import sentence_transformers, transformers
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig

    path, errors = sys.argv[1], []
    for library, version in (("transformers", "4.57.1"), ("transformers", "6.0.0"), ("sentence_transformers", "5.4.1")):
        module = sys.modules[library]
        real, module.__version__ = module.__version__, version  # pretend an unsupported release is installed
        try:
            if library == "transformers":
                AutoConfig.from_pretrained(path, trust_remote_code=True)
            else:
                SentenceTransformer(path, trust_remote_code=True, device="cpu")
            errors.append(None)
        except ImportError as error:  # a failed import leaves nothing cached: the next attempt re-runs the check
            errors.append(str(error))
        finally:
            module.__version__ = real
    print(json.dumps(errors))
    """
)


def test_remote_code_names_an_unsupported_version(exported, tmp_path):
    result = run_without_package(UNSUPPORTED_VERSIONS, exported, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    old, new, old_st = json.loads(result.stdout.strip().splitlines()[-1])
    assert old.startswith("RIME needs transformers>=5.17.0,<6.0.0, found 4.57.1")
    assert new.startswith("RIME needs transformers>=5.17.0,<6.0.0, found 6.0.0")
    assert "needs sentence-transformers>=6.0.1,<7.0.0, found 5.4.1" in old_st


def test_the_version_gate_can_be_skipped_explicitly(monkeypatch):
    from transformers_rime.models.rime.configuration_rime import check_transformers_version

    with pytest.raises(ImportError):
        check_transformers_version("6.1.0")
    monkeypatch.setenv("RIME_SKIP_VERSION_CHECK", "1")
    check_transformers_version("6.1.0")  # a warning, not an error


def test_directory_records_the_versions_that_wrote_it(exported):
    import sentence_transformers
    import transformers

    assert json.loads((exported / "config.json").read_text())["transformers_version"] == transformers.__version__
    written = json.loads((exported / "config_sentence_transformers.json").read_text())["__version__"]
    assert written["sentence_transformers"] == sentence_transformers.__version__
    assert written["transformers"] == transformers.__version__
    assert written["pytorch"] == torch.__version__
