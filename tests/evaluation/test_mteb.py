"""The mteb adapter's protocol methods, without mteb: batches of dicts in, the encoder's embeddings out."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from transformers_rime import RimeEncoder
from transformers_rime.evaluation.mteb import RimeMtebEncoder
from transformers_rime.testing import tiny_rime_model, tiny_rime_processor


@pytest.fixture(scope="module")
def encoder():
    processor = tiny_rime_processor()
    return RimeEncoder(tiny_rime_model(processor=processor), processor)


def collate(rows):
    return {key: [row[key] for row in rows] for key in rows[0]}


def test_encode_maps_prompt_types_to_roles_and_modes(encoder):
    adapter = RimeMtebEncoder(encoder, query_mode="gen", document_mode="disc", max_new_tokens=4)
    texts = ["a red car", "a black cat", "a chart"]
    loader = DataLoader([{"text": t} for t in texts], batch_size=2, collate_fn=collate)  # two batches
    queries = adapter.encode(loader, task_metadata=None, hf_split="test", hf_subset="default", prompt_type="query")
    np.testing.assert_allclose(
        queries, encoder.encode(texts, mode="gen", role="query", max_new_tokens=4, show_progress_bar=False), atol=1e-5
    )

    class PromptType:  # mteb passes an enum whose value names the side
        value = "document"

    documents = adapter.encode(
        loader, task_metadata=None, hf_split="test", hf_subset="default", prompt_type=PromptType()
    )
    np.testing.assert_allclose(
        documents, encoder.encode(texts, mode="disc", role="document", show_progress_bar=False), atol=1e-5
    )


def test_image_title_body_and_video_rows(encoder):
    adapter = RimeMtebEncoder(encoder, query_mode="disc")
    red = Image.new("RGB", (56, 56), (220, 30, 30))
    frames = torch.zeros(2, 3, 56, 56)  # (frames, C, H, W) in [0, 1]
    batch = {"image": [red, None], "title": ["Cars", "Cats"], "body": ["a red one", None]}
    out = adapter.encode([batch], prompt_type="document")
    expected = encoder.encode(
        [{"text": "Cars a red one", "images": [red]}, "Cats"], role="document", show_progress_bar=False
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert adapter.encode([{"video": [frames], "query": ["what happens?"]}], prompt_type="query").shape == (1, 64)
    with pytest.raises(ValueError, match="no text, image or video"):
        adapter.encode([{"text": [""]}], prompt_type="query")


def test_similarity_functions():
    a = np.array([[3.0, 4.0], [1.0, 0.0]])
    b = np.array([[0.0, 2.0], [1.0, 0.0]])
    torch.testing.assert_close(RimeMtebEncoder.similarity(a, b), torch.tensor([[0.8, 0.6], [0.0, 1.0]]))
    torch.testing.assert_close(RimeMtebEncoder.similarity_pairwise(a, b), torch.tensor([0.8, 1.0]))


def test_the_adapter_satisfies_mtebs_encoder_protocol(encoder):
    """Runs where mteb is installed (it is not a dependency): the protocol check and the model metadata."""
    pytest.importorskip("mteb")
    from mteb.models.models_protocols import EncoderProtocol

    adapter = RimeMtebEncoder(encoder)
    assert isinstance(adapter, EncoderProtocol)
    meta = adapter.mteb_model_meta
    assert meta.embed_dim == 64 and meta.n_parameters == sum(p.numel() for p in encoder.model.parameters())


def test_text_rows_that_end_like_image_files_stay_text(encoder):
    adapter = RimeMtebEncoder(encoder, query_mode="disc")
    batch = {"text": ["figure.png", "The chart is saved as figure.png"]}
    out = adapter.encode([batch], prompt_type="query")
    expected = encoder.encode([{"text": "figure.png"}, "The chart is saved as figure.png"], show_progress_bar=False)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    titled = adapter.encode([{"title": ["Logo download"], "body": ["logo.jpg"]}], prompt_type="document")
    np.testing.assert_allclose(
        titled, encoder.encode([{"text": "Logo download logo.jpg"}], role="document"), atol=1e-5
    )


def test_mtebs_own_mock_tasks_run_end_to_end(encoder):
    """mteb's evaluation loop, data loading and scoring, with the mock tasks it ships (text, text->image, image->text)."""
    import mteb
    from mteb.mocks.mock_tasks.retrieval import (
        MockAny2AnyRetrievalI2TTask,
        MockAny2AnyRetrievalT2ITask,
        MockRetrievalTask,
    )

    adapter = RimeMtebEncoder(encoder, query_mode="gen", document_mode="disc", max_new_tokens=2)
    tasks = [MockRetrievalTask(), MockAny2AnyRetrievalT2ITask(), MockAny2AnyRetrievalI2TTask()]
    results = mteb.evaluate(adapter, tasks, cache=None, show_progress_bar=False)
    scores = {result.task_name: result.get_score() for result in results.task_results}
    assert set(scores) == {"MockRetrievalTask", "MockAny2AnyRetrievalT2I", "MockAny2AnyRetrievalI2T"}
    assert all(0.0 <= score <= 1.0 for score in scores.values()), scores
