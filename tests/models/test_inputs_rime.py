"""Which strings are paths, and the in-memory image forms users hold: numpy arrays, bytes, BytesIO (issue 20)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from transformers_rime.inputs import names_image_file, parse_input
from transformers_rime.testing import random_image, tiny_rime_processor


@pytest.fixture(scope="module")
def processor():
    return tiny_rime_processor()


def test_a_string_with_whitespace_is_always_text(processor):
    for text in ("The chart is saved as figure.png", "Logo download logo.jpg", "see photo.JPG\n"):
        assert parse_input(text, 0).text == text and not names_image_file(text)
    assert names_image_file("figure.png") and names_image_file("/data/My_Photos/cat.JPG")
    with pytest.raises(FileNotFoundError, match="input 3: image file not found: .*nowhere/figure.png"):
        parse_input("nowhere/figure.png", 3)
    # the same text as {"text": ...} renders the same prompt
    assert torch.equal(
        processor.process_inputs(["The chart is saved as figure.png"])["input_ids"],
        processor.process_inputs([{"text": "The chart is saved as figure.png"}])["input_ids"],
    )
    assert parse_input({"text": "figure.png"}, 0).text == "figure.png"


def test_numpy_bytes_and_bytesio_images_equal_the_pil_image(processor):
    image = random_image(40, 30)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    forms = [
        np.asarray(image),
        buffer.getvalue(),
        io.BytesIO(buffer.getvalue()),
        {"text": "x", "image": np.asarray(image)},
    ]
    reference = processor.process_inputs([image])["pixel_values"]
    for form in forms[:3]:
        assert torch.equal(processor.process_inputs([form])["pixel_values"], reference)
    assert torch.equal(processor.process_inputs([forms[3]])["pixel_values"], reference)
    frames = [np.asarray(random_image(28, 28, seed=i)) for i in range(2)]
    as_list = processor.process_inputs([{"video": frames}])
    as_array = processor.process_inputs([{"video": np.stack(frames)}])
    assert torch.equal(as_list["pixel_values_videos"], as_array["pixel_values_videos"])
    assert torch.equal(
        processor.process_inputs([np.stack(frames)])["pixel_values_videos"], as_list["pixel_values_videos"]
    )


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (np.zeros((4, 4, 2), np.uint8), ValueError, r"input 1: an image array must be uint8"),
        (np.zeros((4, 4, 3), np.float32), ValueError, r"input 1: an image array must be uint8"),
        (b"not an image", ValueError, r"input 1: the bytes are not an image"),
        ({"video": [b"nope"]}, ValueError, r"input 1 frame 0: the bytes are not an image"),
    ],
)
def test_bad_in_memory_images_are_named(processor, bad, error, match):
    with pytest.raises(error, match=match):
        processor.process_inputs(["fine", bad])


def test_truncated_bytes_fail_when_decoded_before_batching(processor):
    buffer = io.BytesIO()
    random_image(64, 64).save(buffer, format="PNG")
    with pytest.raises(ValueError, match=r"input 1 image 0: cannot decode the image"):
        processor.process_inputs(["fine", buffer.getvalue()[:80]])
