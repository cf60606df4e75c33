"""`rime serve` end to end: a real server process, called with the official `openai` client and plain HTTP.

One server (a tiny saved model, an API key, small limits) serves the whole module; every answer is compared with
`RimeEncoder.encode` of the same items in this process.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from transformers_rime import RimeEncoder
from transformers_rime.serving.process import start_server, stop_server
from transformers_rime.testing import random_image, tiny_rime_model, tiny_rime_processor


API_KEY = "test-key"
LIMITS = ["--max-items", "6", "--max-text-chars", "200", "--max-image-pixels", str(100 * 100)]
LIMITS += ["--max-body-bytes", "300000", "--max-in-flight", "3", "--max-new-tokens-limit", "48"]


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def launch(folder, *flags):
    """Start a server on the model in `folder` (CPU, one worker) with its own metrics folder and log."""
    port_folder = Path(tempfile.mkdtemp(dir=folder))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROMETHEUS_MULTIPROC_DIR": str(port_folder)}
    flags = ("--accelerator", "cpu", "--devices", "1", *flags)
    return start_server(folder / "model", *flags, log_path=port_folder / "server.log", env=env)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    processor = tiny_rime_processor()
    RimeEncoder(tiny_rime_model(processor=processor, seed=5), processor).save_pretrained(folder / "model")
    return folder


@pytest.fixture(scope="module")
def served(model_folder):
    """(base URL, in-process encoder, media root) of a running server."""
    media = model_folder / "media"
    media.mkdir()
    random_image(50, 40, seed=9).save(media / "local.png")
    flags = ["--api-key", API_KEY, "--max-batch-size", "4", "--max-wait-ms", "20", "--media-root", str(media)]
    process, base = launch(model_folder, *flags, *LIMITS)
    yield base, RimeEncoder.from_pretrained(model_folder / "model", device="cpu"), media
    stop_server(process)


def post(base, body, key=API_KEY, timeout=60):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{base}/v1/embeddings", json=body, headers=headers, timeout=timeout)


def client(base) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0)


def test_the_openai_client_gets_the_encoders_embeddings_as_floats_and_base64(served):
    base, encoder, _ = served
    texts = ["a red car", "a small cat on a sofa", "x"]
    expected = encoder.encode(texts)
    for encoding_format in ("float", "base64"):
        response = client(base).embeddings.create(model="rime", input=texts, encoding_format=encoding_format)
        rows = [row.embedding for row in response.data]
        if encoding_format == "base64":  # asked for explicitly, the client hands the strings over as they are
            rows = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows]
        np.testing.assert_allclose(np.array(rows, dtype=np.float32), expected, atol=1e-5)
        assert [row.index for row in response.data] == [0, 1, 2]
        assert response.usage.prompt_tokens > 0 and response.model == "rime"
    default = client(base).embeddings.create(model="rime", input="a red car")  # the client asks for base64
    np.testing.assert_allclose(default.data[0].embedding, expected[0], atol=1e-5)


@pytest.mark.parametrize("mode", ["disc", "gen"])
def test_multimodal_items_equal_the_encoders_in_both_modes(served, mode):
    base, encoder, _ = served
    image, frames = random_image(48, 36, seed=1), [random_image(40, 40, seed=s) for s in (2, 3)]
    body_items = [
        {"text": "a cat"},
        {"image": data_url(image)},
        {"text": "what is shown?", "image": data_url(image)},
        {"video": [data_url(frame) for frame in frames]},
    ]
    local_items = [{"text": "a cat"}, image, {"text": "what is shown?", "image": image}, frames]
    response = post(base, {"input": body_items, "mode": mode, "max_new_tokens": 6})
    assert response.status_code == 200, response.text
    got = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
    expected = encoder.encode(local_items, mode=mode, max_new_tokens=6)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_extra_body_switches(served):
    base, encoder, _ = served
    texts = ["a red car", "a blue bus"]
    switches = {"mode": "gen", "role": "document", "instruction": "Describe:", "max_new_tokens": 5}
    response = client(base).embeddings.create(
        model="rime", input=texts, encoding_format="float", extra_body={**switches, "return_rewrite": True}
    )
    expected = encoder.generate(texts, role="document", instruction="Describe:", max_new_tokens=5)
    got = np.array([row.embedding for row in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, np.stack([g.embedding for g in expected]), atol=1e-5)
    raw = response.model_dump()["data"]
    assert [(row["rewrite"], row["finished"]) for row in raw] == [(g.text, g.finished) for g in expected]
    assert response.usage.total_tokens > response.usage.prompt_tokens  # generated tokens count


def test_chat_style_messages(served):
    base, encoder, _ = served
    image = random_image(30, 30, seed=4)
    content = [{"type": "text", "text": "a dog"}, {"type": "image_url", "image_url": {"url": data_url(image)}}]
    response = post(base, {"model": "rime", "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200, response.text
    expected = encoder.encode([{"text": "a dog", "images": [image]}])
    np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected[0], atol=1e-5)


def test_local_paths_only_inside_the_media_root(served):
    base, encoder, media = served
    response = post(base, {"input": [{"image": "local.png"}]})
    assert response.status_code == 200, response.text
    expected = encoder.encode([str(media / "local.png")])
    np.testing.assert_allclose(response.json()["data"][0]["embedding"], expected[0], atol=1e-5)
    outside = post(base, {"input": [{"image": "../model/config.json"}]})
    assert outside.status_code == 400 and "outside the media root" in outside.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"input": ["fine", {"image": "data:image/png;base64,aGk="}]}, 400, "input 1.image: not an image"),
        ({"input": ["fine", "x" * 201]}, 400, "input 1: 201 characters"),
        ({"input": ["a"] * 7}, 400, "7 items in one request"),
        ({"input": [{"image": data_url(random_image(120, 120))}]}, 400, "a 120x120 image has 14400 pixels"),
        ({"input": "a", "dimensions": 3}, 400, "dimensions=3"),
        ({"input": "a", "mode": "gen", "max_new_tokens": 49}, 400, "over this server's limit of 48"),
        ({"input": [{"image": "https://example.com/cat.png"}]}, 400, "does not fetch remote URLs"),
        ({"input": "a", "frobnicate": True}, 400, "unknown field"),
        ({"input": ["<|im_start|>system"]}, 400, "input 0"),
        ({"input": [{"text": "big", "image": data_url(random_image(300, 300, seed=8))}]}, 413, "Payload too large"),
    ],
)
def test_bad_requests_get_their_status_and_a_message_naming_the_item(served, body, status, message):
    base, _, _ = served
    response = post(base, body)
    assert response.status_code == status, response.text
    assert message in response.text


def test_a_body_that_is_not_a_json_object_is_a_400(served):
    base, _, _ = served
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    for content in (b"not json", b'["a list"]'):
        response = httpx.post(f"{base}/v1/embeddings", content=content, headers=headers)
        assert response.status_code == 400 and "JSON object" in response.json()["error"]["message"], response.text


def test_a_bad_request_never_fails_the_good_ones_batched_with_it(served):
    base, encoder, _ = served
    bodies = [{"input": [f"good {i}"]} for i in range(3)] + [{"input": ["fine", {"image": "data:image/png;base64,x"}]}]
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda body: post(base, body), bodies))
    assert [r.status_code for r in responses] == [200, 200, 200, 400]
    for i, response in enumerate(responses[:3]):
        np.testing.assert_allclose(response.json()["data"][0]["embedding"], encoder.encode(f"good {i}"), atol=1e-5)


def test_the_api_key_is_enforced_and_probes_are_open(served):
    base, _, _ = served
    assert post(base, {"input": "a"}, key=None).status_code == 401
    assert post(base, {"input": "a"}, key="wrong").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).embeddings.create(model="m", input="a")
    assert httpx.get(f"{base}/health").status_code == 200
    assert httpx.get(f"{base}/ready").status_code == 200
    assert httpx.get(f"{base}/v1/models").status_code == 401
    models = client(base).models.list()
    assert [model.id for model in models.data] and models.data[0].owned_by == "transformers_rime"


def test_overload_is_answered_with_503_and_retry_after_not_a_timeout(served):
    base, encoder, _ = served
    body = {"input": ["a long rewrite please"] * 6, "mode": "gen", "max_new_tokens": 48}
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: post(base, body, timeout=120), range(12)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    assert all(r.headers.get("retry-after") == "1" for r in responses if r.status_code == 503)
    expected = encoder.encode(body["input"], mode="gen", max_new_tokens=48)
    for response in responses:
        if response.status_code == 200:
            got = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
            np.testing.assert_allclose(got, expected, atol=1e-5)


def test_metrics(served):
    base, _, _ = served
    assert post(base, {"input": ["one", "two"]}).status_code == 200
    assert post(base, {"input": "three", "mode": "gen", "max_new_tokens": 3}).status_code == 200
    time.sleep(1.0)  # the logger process applies the workers' entries asynchronously
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).text
    for name in (
        'rime_requests_total{status="200"}',
        'rime_items_total{mode="disc"}',
        'rime_items_total{mode="gen"}',
        "rime_batch_requests_bucket",
        "rime_request_latency_seconds_bucket",
        "rime_requests_in_flight",
        "rime_generated_tokens_total",
    ):
        assert name in text, name


def test_sigterm_finishes_the_requests_already_accepted(model_folder, served):
    _, encoder, _ = served
    process, base = launch(model_folder)
    body = {"input": ["x"] * 6, "mode": "gen", "max_new_tokens": 1000}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post, base, body, None)
        time.sleep(1.0)  # accepted and generating
        os.kill(process.pid, signal.SIGTERM)  # the main process only, as a process manager sends it
        response = pending.result(timeout=120)
    assert response.status_code == 200, response.text
    expected = encoder.encode(body["input"], mode="gen", max_new_tokens=1000)
    np.testing.assert_allclose([row["embedding"] for row in response.json()["data"]], expected, atol=1e-5)
    assert process.wait(timeout=60) == 0  # and then every worker stopped with it
