"""RimeProcessor: prompt layout, tokens, padding, truncation policy, image sanitation, stock behaviour."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from transformers_rime import RimeProcessor
from transformers_rime.inputs import load_image, sample_frames, to_rgb
from transformers_rime.testing import (
    CHAT_TEMPLATE,
    random_image,
    tiny_image_processor,
    tiny_rime_processor,
    tiny_tokenizer,
)


def _decode(processor, ids):
    return processor.tokenizer.decode([i for i in ids if i != processor.tokenizer.pad_token_id])


def test_rime_tokens_are_added_as_ordinary_tokens_and_survive_skip_special_tokens():
    tokenizer = tiny_tokenizer()
    assert "<disc_emb>" not in tokenizer.get_vocab()
    processor = tiny_rime_processor(tokenizer=tokenizer)
    ids = processor.tokenizer("x <gen_emb> y <disc_emb>")["input_ids"]
    assert processor.gen_emb_token_id in ids and processor.disc_emb_token_id in ids
    assert "<gen_emb>" not in processor.tokenizer.all_special_tokens
    decoded = processor.tokenizer.decode(ids, skip_special_tokens=True)
    assert "<gen_emb>" in decoded and "<disc_emb>" in decoded


def test_existing_tokens_are_reused():
    tokenizer = tiny_tokenizer(with_rime_tokens=True)
    before = tokenizer.convert_tokens_to_ids(["<gen_emb>", "<disc_emb>"])
    processor = tiny_rime_processor(tokenizer=tokenizer)
    assert [processor.gen_emb_token_id, processor.disc_emb_token_id] == before


def test_disc_and_gen_prompts(processor, image):
    disc = processor(text=["a red car"], images=[[image]], mode="disc", role="query", return_tensors="pt")
    gen = processor(text=["a red car"], images=[[image]], mode="gen", role="query", return_tensors="pt")
    disc_text, gen_text = (
        _decode(processor, disc["input_ids"][0].tolist()),
        _decode(processor, gen["input_ids"][0].tolist()),
    )
    head = "<|vision_start|>" + "<|image_pad|>" * int(disc["image_grid_thw"].prod() // 4) + "<|vision_end|>"
    expected_user = f"<|im_start|>user\n{head}Represent the given query for retrieval: a red car\n<disc_emb>\n"
    assert expected_user in disc_text
    assert disc_text.endswith("<disc_emb>\n<|im_end|>\n")
    assert gen_text.startswith(disc_text[: disc_text.index("<disc_emb>") + len("<disc_emb>")])
    assert "<rewrite> </rewrite>" in gen_text and gen_text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_role_and_instruction_select_the_prefix(processor):
    def text_of(**kw):
        return _decode(processor, processor(text=["tea"], mode="disc", return_tensors="pt", **kw)["input_ids"][0])

    assert "Represent the given query for retrieval: tea" in text_of(role="query")
    assert "Represent the given content: tea" in text_of(role="document")
    assert "user\nFind a drink: tea\n<disc_emb>" in text_of(role="document", instruction="Find a drink:")
    assert "user\ntea\n<disc_emb>" in text_of(instruction="")


def test_left_padding_is_enforced_even_if_the_tokenizer_was_changed(processor, image):
    processor.tokenizer.padding_side = "right"
    batch = processor(
        text=["a", "a much longer text with many words"], images=[image, None], mode="disc", return_tensors="pt"
    )
    assert batch["attention_mask"][:, -1].all()
    assert not batch["attention_mask"][:, 0].all()


def test_images_belong_to_their_text_and_counts_match_grids(processor):
    images = [None, [random_image(64, 48, seed=1), random_image(30, 90, seed=2)], random_image(50, 50, seed=3)]
    batch = processor(text=["t0", "t1", "t2"], images=images, mode="disc", return_tensors="pt")
    assert batch["image_grid_thw"].shape == (3, 3)
    per_row = (batch["input_ids"] == processor.image_token_id).sum(1).tolist()
    tokens = (batch["image_grid_thw"].prod(1) // 4).tolist()
    assert per_row == [0, tokens[0] + tokens[1], tokens[2]]


def test_video_as_images_feeds_frames_through_the_image_path(processor):
    frames = [random_image(40, 40, seed=i) for i in range(20)]
    processor.max_video_frames = 4
    processor.video_as_images = True
    batch = processor(text=["cooking"], videos=[frames], mode="disc", return_tensors="pt")
    assert batch["image_grid_thw"].shape[0] == 4
    assert "pixel_values_videos" not in batch
    assert sample_frames(list(range(20)), 4) == [0, 6, 12, 19]


def test_too_long_prompt_is_an_error_never_a_cut(processor, image):
    batch = processor(text=["short", "word " * 50], images=[image, None], mode="disc", return_tensors="pt")
    lengths = batch["attention_mask"].sum(1).tolist()
    with pytest.raises(ValueError, match=rf"item 1: the prompt is {lengths[1]} tokens"):
        processor(
            text=["short", "word " * 50],
            images=[image, None],
            mode="disc",
            max_length=lengths[0] + 1,
            truncation=True,
            return_tensors="pt",
        )
    ok = processor(text=["short"], images=[image], mode="disc", max_length=lengths[0], return_tensors="pt")
    assert ok["input_ids"].shape[1] == lengths[0]


def test_bad_mode_role_and_mismatched_lengths(processor):
    with pytest.raises(ValueError, match="Unknown mode 'fast'"):
        processor(text=["x"], mode="fast")
    with pytest.raises(ValueError, match="Unknown role 'corpus'"):
        processor(text=["x"], mode="disc", role="corpus")
    with pytest.raises(ValueError, match="belong to `text"):
        processor(text=["x", "y"], images=[None], mode="disc")
    with pytest.raises(ValueError, match="only apply with"):
        processor(text=["x"], role="query")
    with pytest.raises(ValueError, match="empty input"):
        processor(text=[""], mode="disc")


def test_without_mode_it_is_the_stock_qwen_processor(processor, image):
    from transformers import Qwen2VLProcessor

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    templated = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours = processor(text=[templated], images=[image], return_tensors="pt")
    stock = Qwen2VLProcessor.__call__(processor, text=[templated], images=[image], return_tensors="pt")
    assert ours.keys() == stock.keys()
    assert all(torch.equal(ours[k], stock[k]) for k in ours)
    with_image = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "hi"}]}]
    tokenized = processor.apply_chat_template(
        with_image, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt"
    )
    assert torch.equal(tokenized["input_ids"], ours["input_ids"])
    assert torch.equal(tokenized["pixel_values"], ours["pixel_values"])


def test_works_without_torchvision_and_without_a_video_processor(processor):
    assert processor.get_attributes() == ["image_processor", "tokenizer"]
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"


def test_chat_template_defaults_to_the_tokenizers():
    tokenizer = tiny_tokenizer()
    processor = RimeProcessor(image_processor=tiny_image_processor(), tokenizer=tokenizer)
    assert processor.chat_template == CHAT_TEMPLATE


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_pil_mode_becomes_rgb(processor, mode):
    image = random_image(40, 30, seed=7).convert(mode) if mode not in ("I;16",) else Image.new("I;16", (40, 30), 4000)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)
    batch = processor(text=["x"], images=[image], mode="disc", return_tensors="pt")
    assert batch["pixel_values"].shape[-1] == 3 * 2 * 14 * 14


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("size", [(1, 1), (10, 200), (332, 27), (28, 28), (690, 15420 // 10)])
def test_tiny_and_elongated_images_are_resized(processor, size):
    batch = processor(text=["x"], images=[random_image(*size, seed=1)], mode="disc", return_tensors="pt")
    assert (batch["image_grid_thw"] >= 1).all()


def test_extreme_aspect_ratio_is_refused_with_the_item_named(processor):
    with pytest.raises(ValueError, match=r"item 1 image 0: aspect ratio 3x700"):
        processor(text=["a", "b"], images=[None, random_image(3, 700)], mode="disc")


def test_large_images_respect_the_pixel_budget(processor):
    batch = processor(text=["x"], images=[random_image(4000, 3000)], mode="disc", return_tensors="pt")
    max_pixels = processor.image_processor.size["longest_edge"]
    assert int(batch["image_grid_thw"].prod()) * 14 * 14 <= max_pixels


def test_exif_orientation_is_applied(tmp_path):
    image = random_image(40, 20, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_image_files_missing_or_corrupt_are_named(tmp_path, processor):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(FileNotFoundError, match="item 0 image 0: image file not found: .*nope.png"):
        processor(text=["x"], images=[str(tmp_path / "nope.png")], mode="disc")
    with pytest.raises(ValueError, match="item 0 image 0: cannot read image file .*broken.png"):
        processor(text=["x"], images=[str(corrupt)], mode="disc")
    with pytest.raises(TypeError, match="expected a PIL image or an image path, got int"):
        processor(text=["x"], images=[3], mode="disc")


def test_truncated_image_file_is_an_error_and_the_global_flag_is_untouched(tmp_path):
    from PIL import ImageFile

    path = tmp_path / "cut.png"
    random_image(64, 64).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot read image file"):
        load_image(str(path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
