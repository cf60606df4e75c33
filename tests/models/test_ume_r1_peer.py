"""Peer test: the "ume-r1" preset feeds a UME-R1 checkpoint exactly as mteb's independent UME-R1 wrapper does.

mteb (a dev dependency, pinned) ships `UMER1Wrapper`, written from UME-R1's official evaluation: media first, a
white 56x56 image for text-only items, then `f"{text}\\n<disc_emb>\\n{UME_R1_EMBED_PROMPT}"` in one user turn,
tokenized with `apply_chat_template(..., add_generation_prompt=True)`. Our gen-mode batch must be the same tensors.
"""

from __future__ import annotations

import pytest
import torch
from mteb.models.model_implementations.ume_r1 import BLANK_IMAGE_SIZE, UME_R1_EMBED_PROMPT, UMER1Wrapper

from transformers_rime import RimeProcessor
from transformers_rime.inputs import parse_input
from transformers_rime.testing import random_image, write_published_checkpoint


TEXT = "A dog runs on the beach."
IMAGE = random_image(56, 56)
# ours: a text-only item, an image+text item, an image-only item ...
ITEMS = [TEXT, {"text": TEXT, "image": IMAGE}, IMAGE]
# ... and the same rows as mteb's batches hold them (a row without an image has no "image" entry: mteb would put
# a `None` image in the message, so each row is built on its own, as a batch of rows of one kind would be)
MTEB_ROWS = [{"text": [TEXT]}, {"text": [TEXT], "image": [IMAGE]}, {"image": [IMAGE]}]
# compared exactly (with every other key both sides return: mm_token_type_ids)
TENSORS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")


@pytest.fixture(scope="module")
def ume_processor(tmp_path_factory):
    # the folder name picks the preset (the name contains UME-R1)
    return RimeProcessor.from_pretrained(write_published_checkpoint(tmp_path_factory.mktemp("hub") / "UME-R1-tiny"))


@pytest.fixture(scope="module")
def mteb_messages():
    return [conversation for row in MTEB_ROWS for conversation in UMER1Wrapper._build_messages(row)]


@pytest.fixture(scope="module")
def mteb_batch(ume_processor, mteb_messages):
    """mteb's `encode` call, verbatim, on our processor (so both sides share tokenizer and image processor)."""
    return ume_processor.apply_chat_template(
        mteb_messages, tokenize=True, add_generation_prompt=True, return_dict=True, padding=True, return_tensors="pt"
    )


def test_the_name_picks_the_ume_r1_preset(ume_processor):
    assert ume_processor.gen_instruction == UME_R1_EMBED_PROMPT
    assert ume_processor.text_only_image == "blank"
    assert ume_processor.query_instruction is None and ume_processor.document_instruction is None
    # our blank image is 28x28, mteb's 56x56: the same pixels only because the 3136-pixel floor upscales ours
    assert ume_processor.image_processor.size["shortest_edge"] == BLANK_IMAGE_SIZE[0] * BLANK_IMAGE_SIZE[1]


def test_mteb_rows_are_what_we_think(mteb_messages):
    blank = mteb_messages[0][0]["content"][0]["image"]
    assert blank.size == BLANK_IMAGE_SIZE and blank.getextrema() == ((255, 255),) * 3
    assert [[part["type"] for part in m[0]["content"]] for m in mteb_messages] == [["image", "text"]] * 3
    assert mteb_messages[2][0]["content"][-1]["text"] == f"\n<disc_emb>\n{UME_R1_EMBED_PROMPT}"


@pytest.mark.parametrize("role", ["query", "document"])
def test_gen_mode_feeds_what_mteb_feeds(ume_processor, mteb_messages, mteb_batch, role):
    prompts = [ume_processor.prepare_item(parse_input(item, i), "gen", None).prompt for i, item in enumerate(ITEMS)]
    assert prompts == ume_processor.apply_chat_template(mteb_messages, tokenize=False, add_generation_prompt=True)

    ours = ume_processor.process_inputs(ITEMS, mode="gen", role=role)
    assert sorted(ours.keys()) == sorted(mteb_batch.keys()) and set(TENSORS) <= set(ours.keys())
    for key in ours.keys():
        assert torch.equal(ours[key], mteb_batch[key]), key
    # the blank image (first row) is 4x4 patches: mteb's 56x56 as is, our 28x28 upscaled to it
    assert ours["image_grid_thw"].tolist() == [[1, 4, 4]] * 3


def test_disc_mode_shares_everything_up_to_disc_emb(ume_processor, mteb_batch):
    disc = ume_processor.process_inputs(ITEMS, mode="disc", role="query")
    for key in ("pixel_values", "image_grid_thw"):
        assert torch.equal(disc[key], mteb_batch[key]), key
    disc_emb = ume_processor.disc_emb_token_id
    for row in range(len(ITEMS)):
        theirs = mteb_batch["input_ids"][row][mteb_batch["attention_mask"][row].bool()].tolist()
        ours = disc["input_ids"][row][disc["attention_mask"][row].bool()].tolist()
        assert theirs.count(disc_emb) == ours.count(disc_emb) == 1
        cut = theirs.index(disc_emb) + 1
        assert ours[:cut] == theirs[:cut]
        # after <disc_emb>: "\n" and the end of the user turn, no gen prompt and no assistant turn
        assert ume_processor.tokenizer.decode(ours[cut:]) == "\n<|im_end|>\n"


def test_media_item_text_is_stripped_as_mteb_does(ume_processor):
    text = "  A dog runs on the beach. \n"
    messages = UMER1Wrapper._build_messages({"text": [text], "image": [IMAGE]})
    theirs = ume_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours = ume_processor.prepare_item(parse_input({"text": text, "image": IMAGE}, 0), "gen", None).prompt
    assert [ours] == theirs
