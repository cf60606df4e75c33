"""The transformers pipeline of an exported directory: `pipeline("feature-extraction" | "image-feature-extraction",
model=path, trust_remote_code=True)` gives `RimeEncoder.encode`'s embeddings, without the package installed."""

from __future__ import annotations

import filecmp
import json
import textwrap

import numpy as np
import pytest
import torch
from transformers import pipeline

from remote_code import run_without_package
from transformers_rime import RimeEncoder
from transformers_rime.models.rime import pipeline_rime as pipeline_module
from transformers_rime.models.rime.pipeline_rime import PIPELINE_TASKS, RimeFeatureExtractionPipeline, custom_pipelines
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor


@pytest.fixture(scope="module")
def encoder():
    processor = tiny_rime_processor()
    return RimeEncoder(tiny_rime_model(processor=processor, max_new_tokens=4), processor)


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "rime-tiny"
    encoder.save_pretrained(path, model_card=False)
    return path


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("media") / "photo.png"
    random_image(40, 56, seed=7).save(path)
    return path


@pytest.fixture(scope="module")
def items(image_path):
    return ["a red car on a street", str(image_path), {"text": "what is shown here?", "image": str(image_path)}]


@pytest.fixture(scope="module")
def pipe(encoder):
    """The pipeline class on the in-memory model (what a directory's `custom_pipelines` entry builds)."""
    return pipeline(
        "feature-extraction",
        model=encoder.model,
        processor=encoder.processor,
        pipeline_class=RimeFeatureExtractionPipeline,
        device="cpu",
    )


def test_export_names_the_pipeline_for_both_tasks(exported, encoder):
    config = json.loads((exported / "config.json").read_text())
    assert config["custom_pipelines"] == custom_pipelines("pipeline_rime")
    assert set(config["custom_pipelines"]) == set(PIPELINE_TASKS) == {"feature-extraction", "image-feature-extraction"}
    assert config["custom_pipelines"]["feature-extraction"]["impl"] == "pipeline_rime.RimeFeatureExtractionPipeline"
    assert filecmp.cmp(pipeline_module.__file__, exported / "pipeline_rime.py", shallow=False)
    assert "custom_pipelines" not in encoder.model.config.to_dict()  # only the saved config.json is changed


# ----------------------------------------------------------------------------- without the package

WITHOUT_PACKAGE = textwrap.dedent(
    """
    import json, sys
    import torch

    torch.set_num_threads(1)
    from transformers import pipeline

    path, image_path = sys.argv[1], sys.argv[2]
    items = ["a red car on a street", image_path, {"text": "what is shown here?", "image": image_path}]
    out = {}
    for task in ("feature-extraction", "image-feature-extraction"):
        pipe = pipeline(task, model=path, trust_remote_code=True, device="cpu")
        result = {"class": type(pipe).__module__ + "." + type(pipe).__name__}
        result["disc"] = pipe(items)
        result["single"] = [pipe(item) for item in items]
        result["document"] = pipe(items, role="document", batch_size=2)
        gen = pipe(items, mode="gen", max_new_tokens=2, return_tensors=True)
        result["gen_type"] = type(gen[0]).__name__
        result["gen"] = torch.cat(gen).tolist()
        try:
            pipe(["a red car", {"text": "a bike", "colour": "red"}])
        except Exception as error:
            result["bad"] = f"{type(error).__name__}: {error}"
        out[task] = result
    assert "transformers_rime" not in sys.modules
    print(json.dumps(out))
    """
)


def test_both_tasks_give_the_encoders_embeddings_without_the_package(exported, encoder, image_path, items, tmp_path):
    result = run_without_package(WITHOUT_PACKAGE, exported, image_path, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    disc = encoder.encode(items)
    document = encoder.encode(items, role="document")
    gen = encoder.encode(items, mode="gen", max_new_tokens=2)
    assert not np.allclose(gen, disc)
    for task in PIPELINE_TASKS:
        got = out[task]
        # the class the directory's own pipeline_rime.py defines
        assert got["class"].startswith("transformers_modules.")
        assert got["class"].endswith(".pipeline_rime.RimeFeatureExtractionPipeline")
        # one (1, dim) embedding per item, as the stock pipelines keep a leading axis of 1
        assert np.array(got["disc"]).shape == (len(items), 1, encoder.embedding_dim)
        np.testing.assert_allclose(np.array(got["disc"])[:, 0], disc, atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.array(got["single"])[:, 0], disc, atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.array(got["document"])[:, 0], document, atol=1e-5, rtol=0)
        assert got["gen_type"] == "Tensor"
        np.testing.assert_allclose(np.array(got["gen"]), gen, atol=1e-5, rtol=0)
        assert got["bad"].startswith("ValueError: input 1: unknown key(s) ['colour']")


# ----------------------------------------------------------------------------- in process


def test_shapes_batching_and_call_defaults(pipe, encoder, items):
    vectors = pipe("a red car on a street")
    assert np.array(vectors).shape == (1, encoder.embedding_dim)
    assert abs(np.linalg.norm(vectors[0]) - 1) < 1e-5  # L2-normalised
    tensor = pipe("a red car on a street", return_tensors=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (1, encoder.embedding_dim)
    assert tensor.dtype == torch.float32
    reference = encoder.encode(items, role="document", instruction="Find it:")
    for batch_size in (1, 2, 3):
        got = pipe(items, role="document", instruction="Find it:", batch_size=batch_size, return_tensors=True)
        np.testing.assert_allclose(torch.cat(got).numpy(), reference, atol=1e-5, rtol=0)
    generated = pipe((item for item in items), role="document", instruction="Find it:", return_tensors=True)
    np.testing.assert_allclose(torch.cat(list(generated)).numpy(), reference, atol=1e-5, rtol=0)
    assert pipe([]) == []
    # settings given to `pipeline(...)` are defaults that a call overrides
    gen_pipe = pipeline(
        "image-feature-extraction",
        model=encoder.model,
        processor=encoder.processor,
        pipeline_class=RimeFeatureExtractionPipeline,
        device="cpu",
        mode="gen",
        max_new_tokens=2,
    )
    gen = encoder.encode(items, mode="gen", max_new_tokens=2)
    np.testing.assert_allclose(np.array(gen_pipe(items))[:, 0], gen, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.array(gen_pipe(items, batch_size=3))[:, 0], gen, atol=1e-5, rtol=0)
    disc = np.array(gen_pipe(items[:2], mode="disc"))[:, 0]
    np.testing.assert_allclose(disc, encoder.encode(items[:2]), atol=1e-5, rtol=0)


def test_every_item_is_checked_before_any_model_work(pipe, image_path):
    calls = []
    hook = pipe.model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(FileNotFoundError, match="input 2: image file not found"):
            pipe(["a red car", str(image_path), "missing.png"])
        with pytest.raises(ValueError, match="input 1: empty text"):
            pipe(("a red car", " "))
        with pytest.raises(ValueError, match="input 0: RIME does not take chat-message inputs"):
            pipe([{"role": "user", "content": "hi"}])
        with pytest.raises(ValueError, match="longer than max_length=4"):
            pipe(["a red car"], max_length=4)
        assert not calls
    finally:
        hook.remove()
    # the items of a generator are checked as they come, and still named by their position
    with pytest.raises(TypeError, match="input 1: unsupported input type int"):
        list(pipe(item for item in ["a red car", 7]))


def test_bad_arguments_are_refused(pipe):
    with pytest.raises(TypeError, match=r"Unknown argument\(s\) \['truncation'\]"):
        pipe("a red car", truncation=True)
    with pytest.raises(ValueError, match="Unknown mode 'fast'"):
        pipe("a red car", mode="fast")
    with pytest.raises(ValueError, match="Unknown role 'user'"):
        pipe("a red car", role="user")
    with pytest.raises(ValueError, match="pool=False is refused"):
        pipe("a red car", pool=False)
    assert np.array(pipe("a red car", pool=True)).shape == (1, 64)
    with pytest.raises(ValueError, match="max_new_tokens must be a non-negative integer"):
        pipe("a red car", mode="gen", max_new_tokens=-1)
    with pytest.raises(TypeError, match="only apply with mode='gen'"):
        pipe("a red car", generate_kwargs={"do_sample": True})
    with pytest.raises(ValueError, match="beam search"):
        pipe("a red car", mode="gen", generate_kwargs={"num_beams": 2})
    with pytest.raises(ValueError, match="one embedding per item"):
        pipe("a red car", mode="gen", generate_kwargs={"do_sample": True, "num_return_sequences": 2})


def test_the_exported_pipeline_needs_trust_remote_code(exported):
    with pytest.raises(ValueError, match="trust_remote_code"):
        pipeline("feature-extraction", model=str(exported), device="cpu")
