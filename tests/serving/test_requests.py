"""The server's request checks, without a server: fields, items, media access and every limit, each named."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from transformers_rime.serving.requests import RequestError, ServeLimits, parse_request
from transformers_rime.testing import random_image


def data_url(image: Image.Image, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def parse(body, limits=None, dimension=None):
    return parse_request(body, limits or ServeLimits(), "rime-test", dimension)


def test_openai_inputs_and_rime_switches():
    request = parse(
        {
            "input": "a red car",
            "model": "whatever",
            "encoding_format": "base64",
            "mode": "gen",
            "role": "document",
            "instruction": "Describe it:",
            "max_new_tokens": 16,
            "return_rewrite": True,
        }
    )
    assert request.items == [{"text": "a red car"}] and request.names == ["input 0"]
    assert (request.mode, request.role, request.instruction, request.max_new_tokens) == (
        "gen",
        "document",
        "Describe it:",
        16,
    )
    assert (request.encoding_format, request.return_rewrite, request.model) == ("base64", True, "whatever")
    assert parse({"input": ["a", "b"]}).model == "rime-test"


def test_multimodal_items_decode_data_urls():
    image = random_image(40, 30, seed=1)
    request = parse(
        {
            "input": [
                {"text": "a cat"},
                {"image": data_url(image)},
                {"text": "what is it?", "image": data_url(image)},
                {"video": [data_url(random_image(seed=s)) for s in range(3)]},
                "photo.jpg",  # a string is text, never a path
            ]
        }
    )
    assert request.items[0] == {"text": "a cat"}
    assert request.items[1]["images"][0].size == (40, 30)
    assert np.array_equal(np.asarray(request.items[1]["images"][0].convert("RGB")), np.asarray(image))
    assert request.items[2]["text"] == "what is it?" and len(request.items[2]["images"]) == 1
    assert len(request.items[3]["video"]) == 3
    assert request.items[4] == {"text": "photo.jpg"}


def test_vllm_chat_messages_make_one_item():
    image = random_image(seed=2)
    request = parse(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a dog"},
                        {"type": "image_url", "image_url": {"url": data_url(image)}},
                    ],
                }
            ]
        }
    )
    assert request.names == ["messages"] and request.items[0]["text"] == "a dog"
    assert len(request.items[0]["images"]) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": "a", "extra": 1}, r"unknown field\(s\) \['extra'\]"),
        ({"model": "m"}, "exactly one of `input`"),
        ({"input": []}, "input is empty"),
        ({"input": "a", "mode": "both"}, "mode='both'"),
        ({"input": "a", "role": "passage"}, "role='passage'"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format='int8'"),
        ({"input": "a", "max_new_tokens": -1}, "max_new_tokens must be a non-negative integer"),
        ({"input": "a", "return_rewrite": True}, "return_rewrite needs mode='gen'"),
        ({"input": ["fine", 3]}, "input 1: expected a string or an object"),
        ({"input": ["fine", {"txt": "x"}]}, r"input 1: unknown key\(s\) \['txt'\]"),
        ({"input": ["fine", {}]}, "input 1: an empty item"),
        ({"input": [[1, 2, 3]]}, "input 0: token-id inputs are not supported"),
        ({"input": [{"image": "data:image/png;base64,@@@"}]}, "input 0.image: the data URL is not valid base64"),
        ({"input": [{"image": "data:text/plain;base64,aGk="}]}, "input 0.image: expected a base64 image data URL"),
        ({"input": [{"image": "data:image/png;base64,aGk="}]}, "input 0.image: not an image PIL can read"),
        ({"input": [{"video": []}]}, "input 0.video: a video needs at least one frame"),
        ({"input": [{"image": "ftp://host/a.png"}]}, "unsupported URL scheme"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, r"messages\[0\]: expected a user"),
    ],
)
def test_bad_requests_name_the_field_or_item(body, message):
    with pytest.raises(RequestError, match=message) as caught:
        parse(body)
    assert caught.value.status == 400


def test_limits():
    limits = ServeLimits(max_items=2, max_text_chars=5, max_image_pixels=50 * 50, max_frames=2, max_new_tokens=8)
    cases = [
        ({"input": ["a", "b", "c"]}, "3 items in one request; this server takes at most 2"),
        ({"input": ["toolong"]}, "input 0: 7 characters; this server takes at most 5"),
        ({"input": [{"image": data_url(random_image(60, 60))}]}, "a 60x60 image has 3600 pixels"),
        ({"input": [{"video": [data_url(random_image(seed=s)) for s in range(3)]}]}, "3 frames"),
        ({"input": "a", "mode": "gen", "max_new_tokens": 9}, "max_new_tokens=9 is over this server's limit of 8"),
    ]
    for body, message in cases:
        with pytest.raises(RequestError, match=message):
            parse(body, limits)
    with pytest.raises(RequestError, match="dimensions=8: this model's embeddings have 64 dimensions"):
        parse({"input": "a", "dimensions": 8}, dimension=64)
    assert parse({"input": "a", "dimensions": 64}, dimension=64).items == [{"text": "a"}]


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = Image.new("1", (12_000, 12_000))  # 144 M pixels in a few kilobytes of PNG
    url = data_url(bomb)
    assert len(url) < 200_000
    with pytest.raises(RequestError, match="a 12000x12000 image has 144000000 pixels"):
        parse({"input": [{"image": url}]})


def test_remote_urls_and_local_paths_only_where_allowed(tmp_path):
    with pytest.raises(RequestError, match="does not fetch remote URLs.*--allow-remote-media"):
        parse({"input": [{"image": "http://169.254.169.254/latest/meta-data"}]})
    with pytest.raises(RequestError, match="does not read local paths.*--media-root"):
        parse({"input": [{"image": "/etc/passwd"}]})
    root = tmp_path / "media"
    root.mkdir()
    random_image(seed=3).save(root / "cat.png")
    (tmp_path / "secret.png").write_bytes((root / "cat.png").read_bytes())
    limits = ServeLimits(media_root=str(root))
    assert parse({"input": [{"image": "cat.png"}]}, limits).items[0]["images"][0].size == (64, 48)
    for escape in ("../secret.png", str(tmp_path / "secret.png")):
        with pytest.raises(RequestError, match="outside the media root"):
            parse({"input": [{"image": escape}]}, limits)
    with pytest.raises(RequestError, match="no file missing.png in the media root"):
        parse({"input": [{"image": "missing.png"}]}, limits)
