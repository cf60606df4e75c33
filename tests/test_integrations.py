"""The README's LangChain, LlamaIndex and chromadb recipes, run as written against a tiny export, offline: each gives
exactly `encode_document` for documents and `encode_query` for queries (RimeEncoder's embeddings in disc mode).

The packages come with the `integrations` extra (`pip install -e ".[integrations]"`, which CI installs); without one
of them its test is skipped."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from transformers_rime import RimeEncoder
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor


README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use it with LangChain, LlamaIndex and chromadb"
DOCUMENTS = ["A red sports car parked on a street.", "A bowl of ramen with an egg."]
QUERY = "which car is red?"


def recipes() -> dict[str, str]:
    """The section's Python blocks, by the package each imports first."""
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return {re.search(r"^(?:from|import) (\w+)", block, re.MULTILINE).group(1): block for block in blocks}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding `rime-export` (a tiny export) and `photo.jpg`, the names the recipes use."""
    folder = tmp_path_factory.mktemp("recipes")
    processor = tiny_rime_processor()
    RimeEncoder(tiny_rime_model(processor=processor), processor).save_pretrained(
        folder / "rime-export", model_card=False
    )
    random_image(40, 56, seed=3).save(folder / "photo.jpg")
    return folder


@pytest.fixture(scope="module")
def reference(workdir):
    st = SentenceTransformer(str(workdir / "rime-export"), trust_remote_code=True, device="cpu")
    return {
        "st": st,
        "documents": st.encode_document(DOCUMENTS),
        "query": st.encode_query([QUERY])[0],
        "image": st.encode_document([str(workdir / "photo.jpg")])[0],
    }


def run_recipe(name: str, workdir: Path, monkeypatch) -> dict:
    pytest.importorskip(name)
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    exec(compile(recipes()[name], f"<README {name} recipe>", "exec"), namespace)
    return namespace


def test_the_readme_has_one_recipe_per_tool():
    assert set(recipes()) == {"langchain_huggingface", "llama_index", "chromadb"}


def test_langchain_recipe_gives_the_document_and_query_embeddings(workdir, reference, monkeypatch):
    out = run_recipe("langchain_huggingface", workdir, monkeypatch)
    np.testing.assert_allclose(np.array(out["document_vectors"]), reference["documents"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(out["query_vector"]), reference["query"], atol=1e-5, rtol=0)
    # the roles differ, so the defaults (documents embedded as queries) would not pass the checks above
    assert not np.allclose(reference["st"].encode_query(DOCUMENTS), reference["documents"], atol=1e-3)
    # as the README says, LangChain turns newlines into spaces before embedding
    text = "A red car.\nIt is parked."
    np.testing.assert_allclose(
        np.array(out["embeddings"].embed_documents([text])),
        reference["st"].encode_document([text.replace("\n", " ")]),
        atol=1e-5,
        rtol=0,
    )


def test_llamaindex_recipe_gives_the_document_query_and_image_embeddings(workdir, reference, monkeypatch):
    out = run_recipe("llama_index", workdir, monkeypatch)
    # LlamaIndex takes max_length from the module's max_seq_length (it failed while that was None)
    assert out["embed_model"].max_length == reference["st"].max_seq_length > 0
    np.testing.assert_allclose(np.array(out["document_vectors"]), reference["documents"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(out["query_vector"]), reference["query"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(out["image_vector"]), reference["image"], atol=1e-5, rtol=0)


def test_chromadb_recipe_stores_documents_and_searches_with_queries(workdir, reference, monkeypatch):
    out = run_recipe("chromadb", workdir, monkeypatch)
    stored = out["collection"].get(ids=["car", "ramen"], include=["embeddings"])["embeddings"]
    np.testing.assert_allclose(np.array(stored), reference["documents"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        np.array(out["embedding_function"].embed_query([QUERY]))[0], reference["query"], atol=1e-5, rtol=0
    )
    # the query was embedded as a query: chromadb's cosine distances are 1 - cos(query, document)
    distances = out["collection"].query(query_texts=[QUERY], n_results=2, include=["distances"])
    expected = 1 - reference["documents"] @ reference["query"]
    best = int(np.argmin(expected))
    assert out["hits"]["ids"] == [[["car", "ramen"][best]]]
    np.testing.assert_allclose(sorted(distances["distances"][0]), sorted(expected), atol=1e-5, rtol=0)
