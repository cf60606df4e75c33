"""Tiny, offline RIME building blocks for tests, examples and benchmarks.

Everything here is built in-process in milliseconds: a byte-level BPE tokenizer with the Qwen special tokens, a
ChatML chat template, a PIL image processor and random Qwen-VL backbones a few hundred thousand parameters large.
Nothing is downloaded.

Example:

```python
>>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor
>>> processor = tiny_rime_processor()
>>> model = tiny_rime_model("qwen2_vl", processor=processor)
>>> batch = processor(text=["a red car"], mode="disc", role="query", return_tensors="pt")
>>> tuple(model(**batch).embeddings.shape)
(1, 64)

```
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, Qwen2Tokenizer

from .models.rime.configuration_rime import DISC_EMB_TOKEN, GEN_EMB_TOKEN, RimeConfig
from .models.rime.modeling_rime import RimeForEmbedding
from .models.rime.processing_rime import RimeProcessor


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A ChatML template with Qwen2-VL's conventions: a default system turn, image/video placeholders inside the
# user content, string or list content, and an optional opened assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "a red car parked on a quiet street",
    "a black cat sleeping on a wooden chair",
    "what is shown in this picture? describe the scene",
    "represent the given query for retrieval: find the document that matches",
    "a chart of quarterly revenue with blue bars and a legend",
    "<rewrite> a concise retrieval friendly description of the input </rewrite>",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}",
    "video frames of a person cooking pasta in a small kitchen",
]


def tiny_tokenizer(
    with_rime_tokens: bool = False, extra_texts: list[str] | None = None, vocab_size: int = 400
) -> Qwen2Tokenizer:
    """A ~400-token byte-level BPE tokenizer with Qwen's special tokens, the chat template and left padding.

    Args:
        with_rime_tokens: also add `<gen_emb>` and `<disc_emb>` as ordinary added tokens, as the published
            RIME / UME-R1 checkpoints have them.
        extra_texts: more texts to learn merges from (so that a demo's words are a few tokens each).
        vocab_size: the BPE vocabulary size before the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_CORPUS + list(extra_texts or []), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, unk_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    tokenizer.chat_template = CHAT_TEMPLATE
    if with_rime_tokens:
        tokenizer.add_tokens([GEN_EMB_TOKEN, DISC_EMB_TOKEN])
    return tokenizer


def tiny_image_processor(family: str = "qwen2_vl"):
    """The PIL Qwen-VL image processor with a small pixel budget (at most 8x8 patches)."""
    from transformers import Qwen2VLImageProcessorPil

    patch_size = 16 if family == "qwen3_vl" else 14
    factor = patch_size * 2
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": factor * factor, "longest_edge": 4 * factor * factor * 4},
    )


def tiny_rime_processor(family: str = "qwen2_vl", tokenizer=None, **kwargs) -> RimeProcessor:
    """A `RimeProcessor` over the tiny tokenizer and image processor (adds the RIME tokens).

    Video frames get the tiny image budget too (1 to 16 merged patches per frame) unless `kwargs` say otherwise.
    """
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    image_processor = tiny_image_processor(family)
    factor = image_processor.patch_size * image_processor.merge_size
    kwargs = {"video_min_pixels": factor * factor, "video_max_pixels": 16 * factor * factor, **kwargs}
    return RimeProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE, **kwargs)


# Qwen2.5-VL and Qwen3-VL vision towers share these sizes; `out_hidden_size` is the text hidden size.
_QWEN25_STYLE_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}


def _round_up(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


def tiny_vlm_config(family: str = "qwen2_vl", tokenizer=None, vision_overrides: dict | None = None, **text_overrides):
    """A random-weights-sized backbone config (hidden 64, 2 layers) whose token ids match `tokenizer`.

    `text_overrides` and `vision_overrides` replace entries of the text and vision sub-configs.
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; choose one of {FAMILIES}.")
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer(with_rime_tokens=True)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>")}
    text = {
        "vocab_size": _round_up(len(tokenizer)),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == "qwen3_vl":
        text.update(
            head_dim=16,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": [4, 2, 2],
                "mrope_interleaved": True,
            },
        )
        vision = {
            **_QWEN25_STYLE_VISION,
            "patch_size": 16,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [1],
        }
    elif family == "qwen2_5_vl":
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]})
        vision = {**_QWEN25_STYLE_VISION, "fullatt_block_indexes": [1]}
    else:
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]})
        vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2}
    text.update(text_overrides)
    vision.update(vision_overrides or {})
    return AutoConfig.for_model(
        family,
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        tie_word_embeddings=True,
    )


def tiny_rime_config(family: str = "qwen2_vl", processor: RimeProcessor | None = None, **kwargs) -> RimeConfig:
    """A `RimeConfig` for a tiny backbone, with token ids read from `processor`'s tokenizer."""
    processor = processor if processor is not None else tiny_rime_processor(family)
    config = RimeConfig(vlm_config=tiny_vlm_config(family, processor.tokenizer), **kwargs)
    processor.apply_token_ids(config)
    return config


def tiny_rime_model(
    family: str = "qwen2_vl", processor: RimeProcessor | None = None, seed: int = 0, **config_kwargs
) -> RimeForEmbedding:
    """A random tiny `RimeForEmbedding` (fp32, eval mode) matching `processor`."""
    config = tiny_rime_config(family, processor, **config_kwargs)
    torch.manual_seed(seed)
    return RimeForEmbedding(config).eval()


def write_published_checkpoint(
    path: str | Path, family: str = "qwen2_vl", seed: int = 0, with_rime_tokens: bool = True
) -> Path:
    """Write a directory in the layout of the published RIME-2B / UME-R1 checkpoints.

    A plain backbone checkpoint (`config.json` of the backbone's `model_type`, `model.safetensors` in the
    upstream key layout without `lm_head.weight` since embeddings are tied), a tokenizer that has `<gen_emb>` and
    `<disc_emb>` as ordinary added tokens, a chat template and a stock `preprocessor_config.json`. With
    `with_rime_tokens=False` the tokenizer lacks them: a stock Qwen-VL-Instruct backbone, what training starts from.
    """
    path = Path(path)
    tokenizer = tiny_tokenizer(with_rime_tokens=with_rime_tokens)
    torch.manual_seed(seed)
    vlm = AutoModelForImageTextToText.from_config(tiny_vlm_config(family, tokenizer))
    vlm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    tiny_image_processor(family).save_pretrained(path)
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return path


class ForcedTokens:
    """A logits processor for tests: every row writes `tokens`, one per step, right after a prompt `prompt_length`
    tokens long (then whatever the model picks). Pass it to `generate(..., logits_processor=[...])` to make a model
    write a chosen rewrite.

    ```python
    >>> force = ForcedTokens(prompt_length=2, tokens=[5])
    >>> force(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 8)).argmax(dim=-1).tolist()
    [5]

    ```
    """

    def __init__(self, prompt_length: int, tokens: list[int]):
        self.prompt_length, self.tokens = prompt_length, tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_length
        if step < len(self.tokens):
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.tokens[step]] = 0.0
        return scores


def random_image(width: int = 64, height: int = 48, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A reproducible noise image."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB").convert(mode)


# Documents name each color and object with a different word than the query, so a random model cannot match
# them by surface overlap: retrieval has to be learned.
_COLOR_WORDS = {
    "red": "crimson",
    "black": "ebony",
    "blue": "azure",
    "green": "emerald",
    "white": "ivory",
    "brown": "chestnut",
    "yellow": "golden",
    "gray": "ashen",
}
_OBJECT_WORDS = {
    "car": "automobile",
    "cat": "kitten",
    "chart": "graph",
    "chair": "seat",
    "street": "road",
    "kitchen": "galley",
    "fox": "vixen",
    "dog": "puppy",
}
_SOLID_RGB = {
    "red": (220, 30, 30),
    "black": (10, 10, 10),
    "blue": (30, 60, 220),
    "green": (30, 180, 60),
    "white": (245, 245, 245),
    "brown": (120, 70, 30),
    "yellow": (240, 220, 40),
    "gray": (128, 128, 128),
}


def color_object_pairs(num_pairs: int = 32, with_images: bool = False, seed: int = 0) -> list[dict]:
    """Query/positive rows with rewrites, in the format the contrastive trainer reads, for offline demos and tests.

    Each row pairs a `"<color> <object>"` query with a document that names the same pair with other words
    (`"red car"` -> `"an automobile, crimson"`), or, with `with_images=True`, shows the color as a solid image next
    to the object's other name. Rewrites restate each side concisely, as a rewrite annotation would. A random model
    cannot match the two sides, so in-batch retrieval must be learned. Rows alternate between two sources
    (`"text"` / `"scenes"`), so dataset-homogeneous batching has something to group.

    ```python
    >>> rows = color_object_pairs(4)
    >>> sorted(rows[0])
    ['positive', 'positive_rewrite', 'query', 'query_rewrite', 'source']

    ```
    """
    rng = np.random.default_rng(seed)
    combos = [(color, obj) for color in _COLOR_WORDS for obj in _OBJECT_WORDS]
    if num_pairs > len(combos):
        raise ValueError(f"color_object_pairs makes at most {len(combos)} distinct pairs, asked for {num_pairs}.")
    rows = []
    for index in rng.permutation(len(combos))[:num_pairs]:
        color, obj = combos[index]
        other_color, other_obj = _COLOR_WORDS[color], _OBJECT_WORDS[obj]
        if with_images:
            positive = {"text": f"an {other_obj}", "image": Image.new("RGB", (56, 56), _SOLID_RGB[color])}
        else:
            positive = f"an {other_obj}, {other_color}"
        rows.append(
            {
                "query": f"{color} {obj}",
                "positive": positive,
                "query_rewrite": f"{color} {obj}",
                "positive_rewrite": f"{other_color} {other_obj}",
                "source": "text" if len(rows) % 2 == 0 else "scenes",
            }
        )
    return rows


def color_object_refine_rl_pairs(num_pairs: int = 32, hard_negatives: int = 0, seed: int = 0) -> list[dict]:
    """`color_object_pairs` for Refine-RL demos: query rewrites in the documents' words, optional hard negatives.

    The query's rewrite names the pair in the document's vocabulary (`"red car"` -> `"crimson automobile"`), so a
    model trained on it reads its gen embedding from what it wrote, and a wrong rewrite retrieves the wrong
    document: the rewrite's content decides the reward, which is what Refine-RL improves. With `hard_negatives=k`,
    each row also lists the documents of `k` pairs with the same color and another object and `k` with the same
    object and another color, so that a rewrite must get both words right. The first rows are those of
    `color_object_pairs(num_pairs)`, and any `num_pairs` gives a prefix of the same sequence.

    ```python
    >>> row = color_object_refine_rl_pairs(8, hard_negatives=1)[0]
    >>> row["query"], row["query_rewrite"], row["positive"], row["negatives"]
    ('blue car', 'azure automobile', 'an automobile, azure', ['an kitten, azure', 'an automobile, crimson'])

    ```
    """
    every_pair = {row["query"]: row for row in color_object_pairs(len(_COLOR_WORDS) * len(_OBJECT_WORDS), seed=seed)}
    rows = []
    for row in color_object_pairs(num_pairs, seed=seed):
        color, obj = row["query"].split()
        row = {**row, "query_rewrite": row["positive_rewrite"]}
        if hard_negatives:
            same_color = [f"{color} {other}" for other in _OBJECT_WORDS if other != obj][:hard_negatives]
            same_object = [f"{other} {obj}" for other in _COLOR_WORDS if other != color][:hard_negatives]
            row["negatives"] = [every_pair[query]["positive"] for query in same_color + same_object]
        rows.append(row)
    return rows
