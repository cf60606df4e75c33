"""Published checkpoints are fed as they were trained: the blank image for text, the Qwen-VL video path, the UME-R1
preset, the disc read offset (issue 18)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from remote_code import run_without_package
from transformers_rime import RimeConfig, RimeEncoder, RimeForEmbedding, RimeProcessor
from transformers_rime.inputs import blank_image, parse_input
from transformers_rime.models.rime.configuration_rime import UME_R1_GEN_INSTRUCTION
from transformers_rime.models.rime.video_rime import VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS
from transformers_rime.rewards.text import is_well_formed
from transformers_rime.testing import (
    CHAT_TEMPLATE,
    random_image,
    tiny_image_processor,
    tiny_rime_processor,
    tiny_tokenizer,
    write_published_checkpoint,
)


# small frames keep the tiny models fast; the pixel floor is lowered to match (the default would upscale them)
FRAME_PIXELS = {"video_min_pixels": 56 * 56, "video_max_pixels": 112 * 112}


def frames(count: int = 3, width: int = 84, height: int = 56) -> list[Image.Image]:
    return [random_image(width, height, seed=10 + i) for i in range(count)]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return write_published_checkpoint(tmp_path_factory.mktemp("RIME-2B-tiny"))


@pytest.fixture(scope="module")
def ume_r1(tmp_path_factory):
    return write_published_checkpoint(tmp_path_factory.mktemp("hub") / "UME-R1-tiny")


# ---------------------------------------------------------------- text-only items


def test_published_checkpoints_feed_text_with_the_blank_image_and_new_configs_do_not(published):
    encoder = RimeEncoder.from_pretrained(published, device="cpu")
    assert encoder.model.config.text_only_image == "blank"
    assert encoder.processor.text_only_image == "blank"
    assert RimeConfig().text_only_image is None
    assert RimeEncoder.from_pretrained(published, device="cpu", text_only_image=None).processor.text_only_image is None
    text_only = encoder.processor.process_inputs(["a red car"], mode="gen")
    explicit = RimeProcessor.from_pretrained(published, text_only_image=None).process_inputs(
        [{"text": "a red car", "image": Image.new("RGB", (28, 28), (255, 255, 255))}], mode="gen"
    )
    assert text_only.keys() == explicit.keys()
    for key in text_only:
        assert torch.equal(text_only[key], explicit[key]), key
    assert text_only["image_grid_thw"].tolist() == [[1, 4, 4]]  # 28x28 upscaled to 56x56: four merged tokens


def test_the_blank_image_choice_is_saved_and_restored(published, tmp_path):
    RimeEncoder.from_pretrained(published, device="cpu").save_pretrained(tmp_path / "export", model_card=False)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["text_only_image"] == "blank"
    loaded = RimeEncoder.from_pretrained(tmp_path / "export", device="cpu")
    assert loaded.model.config.text_only_image == loaded.processor.text_only_image == "blank"


def test_blank_jpg_in_training_data_and_a_text_item_get_the_same_image(published, tmp_path):
    from transformers_rime.data import normalize_item

    (tmp_path / "blank.jpg").write_bytes(b"")  # the reader drops it by name: its content never matters
    item = normalize_item({"text": "a cat", "image": "blank.jpg"}, tmp_path, placeholder_images=("blank.jpg",))
    processor = RimeProcessor.from_pretrained(published)
    from_data = processor.process_inputs([{k: v for k, v in item.items() if v}])
    assert torch.equal(from_data["pixel_values"], processor.process_inputs(["a cat"])["pixel_values"])
    assert torch.equal(
        from_data["pixel_values"], processor.image_processor(blank_image(), return_tensors="pt")["pixel_values"]
    )


# ---------------------------------------------------------------- video


def reference_patches(video: np.ndarray, patch: int, temporal: int, merge: int) -> np.ndarray:
    """Qwen-VL video patches by explicit loops: `video` is (T, C, H, W), already resized and normalised."""
    if len(video) % temporal:
        video = np.concatenate([video, np.repeat(video[-1:], temporal - len(video) % temporal, axis=0)])
    rows = []
    for t in range(0, len(video), temporal):
        for block_y in range(0, video.shape[2], patch * merge):
            for block_x in range(0, video.shape[3], patch * merge):
                for inner_y in range(merge):
                    for inner_x in range(merge):
                        y, x = block_y + inner_y * patch, block_x + inner_x * patch
                        cube = video[t : t + temporal, :, y : y + patch, x : x + patch]  # (tp, C, ps, ps)
                        rows.append(cube.transpose(1, 0, 2, 3).reshape(-1))  # channel, frame, row, column
    return np.stack(rows)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_a_video_is_one_qwen_video_matching_an_independent_patchification(family):
    processor = tiny_rime_processor(family, backbone_type=family, **FRAME_PIXELS)
    clip = frames(3)  # 84x56: inside the budget, already a multiple of 28, so no resize
    batch = processor.process_inputs([{"text": "cooking", "video": clip}], mode="disc")
    image_processor = processor.image_processor
    mean = np.array(image_processor.image_mean, dtype=np.float32)[None, :, None, None]
    std = np.array(image_processor.image_std, dtype=np.float32)[None, :, None, None]
    video = (np.stack([np.asarray(f, dtype=np.float32) for f in clip]).transpose(0, 3, 1, 2) / 255.0 - mean) / std
    expected = reference_patches(video, image_processor.patch_size, image_processor.temporal_patch_size, 2)
    np.testing.assert_allclose(batch["pixel_values_videos"].numpy(), expected, rtol=0, atol=1e-5)
    patch = image_processor.patch_size
    assert batch["video_grid_thw"].tolist() == [[2, 56 // patch, 84 // patch]]  # 3 frames padded to 4
    tokens = (batch["input_ids"] == processor.video_token_id).sum().item()
    assert tokens == 2 * (56 // patch) * (84 // patch) // 4
    assert (batch["mm_token_type_ids"] == 2).sum().item() == tokens
    assert "pixel_values" not in batch  # frames are not images
    if family == "qwen2_5_vl":
        assert batch["second_per_grid_ts"].tolist() == [1.0]  # temporal patch 2 at 2 fps
    else:
        assert "second_per_grid_ts" not in batch


def test_video_patches_equal_the_stock_video_processor():
    """Where torchvision is installed (the GPU machines), the stock processor is the reference itself."""
    pytest.importorskip("torchvision")
    from transformers import Qwen2VLVideoProcessor

    stock = Qwen2VLVideoProcessor(
        size={"shortest_edge": VIDEO_MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS}, cap_pixels_per_frame=True
    )
    clip = frames(3, 392, 280)  # inside the budget and a multiple of 28: neither side resizes
    expected = stock(videos=[clip], return_tensors="pt")
    ours = RimeProcessor(tiny_image_processor(), tiny_tokenizer(), chat_template=CHAT_TEMPLATE)
    batch = ours.process_inputs([{"video": clip}])
    assert batch["video_grid_thw"].tolist() == expected["video_grid_thw"].tolist()
    torch.testing.assert_close(batch["pixel_values_videos"], expected["pixel_values_videos"], atol=1e-5, rtol=0)


def test_video_defaults_are_what_ume_r1_fed_and_frames_are_sampled_by_the_shared_sampler():
    processor = RimeProcessor(tiny_image_processor(), tiny_tokenizer(), chat_template=CHAT_TEMPLATE)
    assert (processor.max_video_frames, processor.video_min_pixels, processor.video_max_pixels) == (
        8,
        128 * 28 * 28,
        768 * 28 * 28,
    )
    clip = [random_image(28, 28, seed=i) for i in range(12)]
    batch = processor.process_inputs([{"video": clip}])
    # 12 frames down to 8 (an even count: four temporal pairs); tiny 28x28 frames upscaled to the 128-token floor
    assert batch["video_grid_thw"].tolist() == [[4, 24, 24]]
    assert VIDEO_MIN_PIXELS <= (24 * 14) ** 2 <= VIDEO_MAX_PIXELS
    _, kept = processor.load_media(parse_input({"video": clip}, 0))
    kept = [np.asarray(frame) for frame in kept]
    assert [next(i for i, f in enumerate(clip) if np.array_equal(np.asarray(f), k)) for k in kept] == [
        0,
        1,
        3,
        4,
        6,
        7,
        9,
        11,  # np.linspace(0, 11, 8) rounded down, as VLM2Vec's loader and the eval readers pick
    ]


def test_a_frame_folder_is_a_video(tmp_path):
    for i in (1, 2, 10):
        random_image(56, 56, seed=i).save(tmp_path / f"frame_{i}.png")
    processor = tiny_rime_processor(**FRAME_PIXELS)
    from_folder = processor.process_inputs([{"video": str(tmp_path)}, tmp_path])
    from_list = processor.process_inputs([{"video": [str(tmp_path / f"frame_{i}.png") for i in (1, 2, 10)]}] * 2)
    assert torch.equal(from_folder["pixel_values_videos"], from_list["pixel_values_videos"])


def test_video_as_images_and_qwen3_keep_frames_as_images(caplog):
    clip = frames(3)
    as_images = tiny_rime_processor(video_as_images=True).process_inputs([{"video": clip}])
    assert as_images["image_grid_thw"].shape[0] == 3 and "pixel_values_videos" not in as_images
    qwen3 = tiny_rime_processor("qwen3_vl", backbone_type="qwen3_vl")
    batch = qwen3.process_inputs([{"video": clip}])
    assert batch["image_grid_thw"].shape[0] == 3 and "pixel_values_videos" not in batch


def stock_backbone(path):
    return AutoModelForImageTextToText.from_pretrained(path).eval()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_video_embeddings_equal_the_stock_backbone_on_the_same_batch(family, tmp_path):
    path = write_published_checkpoint(tmp_path / "ckpt", family=family)
    encoder = RimeEncoder.from_pretrained(path, device="cpu", **FRAME_PIXELS)
    items = [{"text": "cooking pasta", "video": frames(3)}, {"video": frames(4, 56, 84)}, "a kitchen"]
    vlm = stock_backbone(path)
    disc_id = encoder.model.config.disc_emb_token_id

    batch = encoder.processor.process_inputs(items, mode="disc", role="document")
    assert "pixel_values_videos" in batch and "pixel_values" in batch  # two videos, one blank image
    with torch.no_grad():
        hidden = vlm.model(**batch).last_hidden_state
    positions = (batch["input_ids"] == disc_id).int().argmax(dim=1)
    expected = torch.nn.functional.normalize(hidden[torch.arange(3), positions], dim=-1)
    disc = encoder.encode(items, role="document")
    np.testing.assert_allclose(disc, expected.numpy(), atol=1e-5, rtol=0)

    # gen: the rewrite is the stock model's greedy continuation, and <gen_emb> is read where a full forward reads it
    gen_batch = encoder.processor.process_inputs(items, mode="gen")
    out = encoder.model.generate_embeddings(**gen_batch, max_new_tokens=3)
    with torch.no_grad():
        greedy = vlm.generate(**gen_batch, max_new_tokens=3, do_sample=False)
    prompt_length = gen_batch["input_ids"].shape[1]
    gen_id = encoder.model.config.gen_emb_token_id
    gen_steps = (out.sequences == gen_id).int().argmax(dim=1)
    for row, step in enumerate(gen_steps.tolist()):
        assert out.sequences[row, :step].tolist() == greedy[row, prompt_length : prompt_length + step].tolist()
    sequences = torch.cat([gen_batch["input_ids"], out.sequences], dim=1)
    full = {
        **gen_batch,
        "input_ids": sequences,
        "attention_mask": torch.cat([gen_batch["attention_mask"], torch.ones_like(out.sequences)], dim=1),
        "mm_token_type_ids": torch.cat([gen_batch["mm_token_type_ids"], torch.zeros_like(out.sequences)], dim=1),
    }
    with torch.no_grad():
        hidden = vlm.model(**full).last_hidden_state
    expected = torch.nn.functional.normalize(hidden[torch.arange(3), prompt_length + gen_steps], dim=-1)
    np.testing.assert_allclose(out.embeddings.numpy(), expected.numpy(), atol=1e-4, rtol=0)


def test_refine_rl_refuses_video_rows_rather_than_feeding_them_differently(tmp_path):
    from training.test_trainer_refine_rl import make_trainer

    processor = tiny_rime_processor(**FRAME_PIXELS)
    rows = [
        {"query": {"text": "cooking", "video": frames(2)}, "positive": "a kitchen"},
        {"query": "a red car", "positive": "a car"},
    ]
    trainer = make_trainer(tmp_path, processor, rows=rows)
    with pytest.raises(ValueError, match=r"pair 0 \(query\): Refine-RL cannot roll out a video"):
        trainer._with_prompt(trainer.train_dataset[0])


# ---------------------------------------------------------------- presets


def test_a_ume_r1_checkpoint_gets_ume_r1s_exact_prompt(ume_r1):
    encoder = RimeEncoder.from_pretrained(ume_r1, device="cpu")
    config = encoder.model.config
    assert (config.gen_instruction, config.rewrite_start, config.rewrite_end) == (
        UME_R1_GEN_INSTRUCTION,
        "<think>",
        "</answer>",
    )
    assert config.max_new_tokens == 8192 and config.query_instruction is None and config.text_only_image == "blank"
    prompt = encoder.processor.prepare_item(parse_input("What is in the image?", 0), "gen", None).prompt
    expected_user = (
        "<|vision_start|><|image_pad|><|vision_end|>What is in the image?\n<disc_emb>\n"
        "Represent the above input text, images, videos, or any combination of the three as embeddings. First output "
        "the thinking process in <think> </think> tags and then summarize the entire input in a word or sentence. "
        "Finally, use the <gen_emb> tag to represent the entire input.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.endswith("<|im_start|>user\n" + expected_user)
    # UME-R1's answer format is well formed under its tags; an answer without </answer> is not
    target = "<think>a dog on sand</think><answer>a dog on a beach</answer><gen_emb>"
    assert is_well_formed(target, config.rewrite_start, config.rewrite_end, config.gen_emb_token)
    assert not is_well_formed("<think>x</think><answer>y<gen_emb>", "<think>", "</answer>", "<gen_emb>")


def test_the_preset_is_chosen_by_name_unless_told(ume_r1, published, tmp_path):
    assert RimeForEmbedding.from_pretrained(published).config.gen_instruction == RimeConfig().gen_instruction
    told = RimeEncoder.from_pretrained(ume_r1, device="cpu", preset="rime", max_new_tokens=64)
    assert told.model.config.gen_instruction == RimeConfig().gen_instruction
    assert told.processor.gen_instruction == RimeConfig().gen_instruction
    assert told.model.config.max_new_tokens == 64
    assert RimeProcessor.from_pretrained(published, preset="ume-r1").gen_instruction == UME_R1_GEN_INSTRUCTION
    # a saved RIME directory keeps its settings, unless a preset is asked for
    told.save_pretrained(tmp_path / "export", model_card=False)
    assert RimeEncoder.from_pretrained(tmp_path / "export", device="cpu").model.config.max_new_tokens == 64
    again = RimeEncoder.from_pretrained(tmp_path / "export", device="cpu", preset="ume-r1")
    assert again.model.config.gen_instruction == again.processor.gen_instruction == UME_R1_GEN_INSTRUCTION
    with pytest.raises(ValueError, match="Unknown preset 'vlm2vec'"):
        RimeEncoder.from_pretrained(published, device="cpu", preset="vlm2vec")


def test_rime_export_writes_the_chosen_preset(published, tmp_path):
    from transformers_rime.cli import main

    assert (
        main(["export", "--model", str(published), "--output-dir", str(tmp_path / "out"), "--preset", "ume-r1"]) == 0
    )
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["gen_instruction"] == UME_R1_GEN_INSTRUCTION and config["text_only_image"] == "blank"


# ---------------------------------------------------------------- disc read offset and the rewrite budget


def test_disc_token_offset_reads_that_many_tokens_after_disc_emb(published):
    items = ["a red car", {"text": "a photo", "image": random_image()}]
    for mode in ("disc", "gen"):
        encoder = RimeEncoder.from_pretrained(published, device="cpu", disc_token_offset=1)
        batch = encoder.processor.process_inputs(items, mode=mode)
        with torch.no_grad():
            out = encoder.model(**batch)
        disc = (batch["input_ids"] == encoder.model.config.disc_emb_token_id).int().argmax(dim=1)
        after = torch.nn.functional.normalize(out.last_hidden_state[torch.arange(2), disc + 1], dim=-1)
        torch.testing.assert_close(out.embeddings, after)
        assert encoder.processor.tokenizer.decode(batch["input_ids"][0, disc[0] + 1]) == "\n"
    generated = encoder.model.generate_embeddings(**batch, max_new_tokens=2)
    torch.testing.assert_close(generated.disc_embeddings, out.embeddings, atol=1e-5, rtol=0)
    default = RimeEncoder.from_pretrained(published, device="cpu")
    assert not np.allclose(default.encode(items), encoder.encode(items), atol=1e-3)


def test_rewrites_cut_by_the_budget_are_reported(published, caplog):
    from transformers_rime.evaluation import evaluate
    from transformers_rime.evaluation.tasks import RetrievalTask

    encoder = RimeEncoder.from_pretrained(published, device="cpu")
    with caplog.at_level("WARNING"):
        results = encoder.generate(["a red car", "a blue bus"], max_new_tokens=1)
    assert [r.finished for r in results] == [False, False]  # random weights never write <gen_emb> in one step
    assert "2 of 2 rewrites (100.0%) hit the budget of 1 new tokens" in caplog.text
    task = RetrievalTask(
        name="t", queries=["a red car", "a bus"], corpus=["car", "bus"], relevance=[{0: 1.0}, {1: 1.0}]
    )
    report = evaluate(encoder, [task], query_modes=("gen",), corpus_modes=("disc",), max_new_tokens=1)
    assert report["tasks"]["t"]["unfinished_share"] == {"queries/gen": 1.0}


# ---------------------------------------------------------------- exports, without the package

WITHOUT_PACKAGE = textwrap.dedent(
    """
    import json, sys
    import torch

    torch.set_num_threads(1)
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoProcessor

    path, frame_folder = sys.argv[1], sys.argv[2]
    items = ["a red car", {"text": "cooking", "video": frame_folder}]
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    batch = processor.process_inputs(items, mode="disc", role="document")
    with torch.no_grad():
        auto = model(**batch).embeddings
    st = SentenceTransformer(path, trust_remote_code=True, device="cpu")
    out = {
        "keys": sorted(batch.keys()),
        "video_pads": int((batch["input_ids"] == processor.video_token_id).sum()),
        "auto_document": auto.tolist(),
        "query": st.encode_query(items).tolist(),
        "gen_query": st.encode_query(items, mode="gen", max_new_tokens=2).tolist(),
    }
    assert "transformers_rime" not in sys.modules
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_an_export_of_a_published_checkpoint_feeds_text_and_video_alike_everywhere(family, tmp_path):
    published = write_published_checkpoint(tmp_path / "RIME-2B-tiny", family=family)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames(3)):
        frame.save(folder / f"{i}.png")
    encoder = RimeEncoder.from_pretrained(published, device="cpu", **FRAME_PIXELS)
    encoder.save_pretrained(tmp_path / "export", model_card=False)
    result = run_without_package(WITHOUT_PACKAGE, tmp_path / "export", folder, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    expected_keys = {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"}  # blank image + video
    assert expected_keys <= set(out["keys"])
    assert ("second_per_grid_ts" in out["keys"]) == (family == "qwen2_5_vl")
    items = ["a red car", {"text": "cooking", "video": str(folder)}]
    batch = encoder.processor.process_inputs(items, mode="disc", role="document")
    assert out["video_pads"] == int((batch["input_ids"] == encoder.processor.video_token_id).sum()) > 0
    np.testing.assert_allclose(out["auto_document"], encoder.encode(items, role="document"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["query"], encoder.encode(items, role="query"), atol=1e-5, rtol=0)
    gen = encoder.encode(items, mode="gen", role="query", max_new_tokens=2)
    np.testing.assert_allclose(out["gen_query"], gen, atol=1e-5, rtol=0)


def test_stage_one_training_feeds_videos_and_blank_images_as_inference_does(published):
    from transformers_rime.training import RimeContrastiveCollator

    encoder = RimeEncoder.from_pretrained(published, device="cpu", **FRAME_PIXELS)
    row = {
        "query": {"text": "cooking", "video": frames(3)},
        "positive": "a kitchen",  # text only: the blank image, as at inference
        "query_rewrite": "someone cooks pasta",
        "positive_rewrite": "a kitchen",
    }
    batch = RimeContrastiveCollator(encoder.processor)([row])
    query, positive = batch["query"][0], batch["positive"][0]
    assert "pixel_values_videos" in query and "pixel_values" in positive
    labels = query.pop("labels")
    out = encoder.model(**query, labels=labels, return_gen_embeddings=True)
    out.loss.backward()  # the video patches reach the loss
    assert encoder.model.vlm.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    np.testing.assert_allclose(out.embeddings.detach().numpy(), encoder.encode([row["query"]]), atol=1e-5, rtol=0)
    positive.pop("labels")
    with torch.no_grad():
        disc = encoder.model(**positive).embeddings
    np.testing.assert_allclose(disc.numpy(), encoder.encode(["a kitchen"], role="document"), atol=1e-5, rtol=0)
