# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""RIME embedding model: discriminative and generative embeddings from one Qwen-VL backbone.

This file ships to the Hub next to the weights (``trust_remote_code``): it imports only torch, ``transformers``
(and ``safetensors``, a transformers dependency, to read weight headers) and its sibling configuration file.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoTokenizer,
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)
from transformers.utils import ModelOutput

from .configuration_rime import (
    DISC_EMB_TOKEN,
    GEN_EMB_TOKEN,
    PRESETS,
    RIME_FIELDS,
    SUPPORTED_BACKBONES,
    PreTrainedConfig,
    RimeConfig,
    preset_for,
    published_settings,
    select_hub_kwargs,
)


# --------------------------------------------------------------------------- pooling (pure functions)


def last_token_positions(input_ids: torch.LongTensor, token_id: int, token_name: str = "token") -> torch.LongTensor:
    """Index of the last occurrence of `token_id` in each row of `input_ids` (`(B, L)` -> `(B,)`).

    Works for any padding side. A row without the token raises a `ValueError` naming the row.

    ```python
    >>> last_token_positions(torch.tensor([[0, 7, 5, 7, 0], [7, 1, 2, 3, 4]]), 7).tolist()
    [3, 0]

    ```
    """
    matches = input_ids == token_id
    missing = (~matches.any(dim=1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"No {token_name} (id {token_id}) in batch row(s) {missing}; was the prompt truncated?")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return torch.where(matches, positions, -1).amax(dim=1)


def offset_positions(positions: torch.LongTensor, offset: int, length: int) -> torch.LongTensor:
    """`positions + offset`, refusing a read past the end of the sequence (`disc_token_offset`).

    ```python
    >>> offset_positions(torch.tensor([3, 5]), 1, 8).tolist()
    [4, 6]

    ```
    """
    shifted = positions + offset
    if offset and bool((shifted >= length).any()):
        rows = (shifted >= length).nonzero().flatten().tolist()
        raise ValueError(f"disc_token_offset={offset} reads past the end of batch row(s) {rows}.")
    return shifted


def last_nonpad_positions(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Index of the last attended position of each row (`(B, L)` -> `(B,)`), for left or right padding.

    ```python
    >>> last_nonpad_positions(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
    [2, 1]

    ```
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).amax(dim=1)


def gather_positions(hidden_states: torch.Tensor, positions: torch.LongTensor) -> torch.Tensor:
    """Pick one hidden state per row: `(B, L, D)`, `(B,)` -> `(B, D)`."""
    return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), positions]


def assistant_token_positions(
    input_ids: torch.LongTensor, token_id: int, disc_emb_id: int, end_ids: list[int], token_name: str = "<gen_emb>"
) -> torch.LongTensor:
    """Index of each row's last `token_id` written in the assistant turn: `(B, L)` -> `(B,)`.

    A gen-mode prompt names `<gen_emb>` in its own instruction, inside the user turn. The generative embedding is read
    at the `<gen_emb>` that ends the rewrite, so an end-of-turn token (`end_ids`) must lie between the row's first
    `<disc_emb>` (the prompt's; a sampled rewrite may write another) and its last `token_id`; a row where none does
    holds a prompt without its rewrite, and raises a `ValueError` naming the row.

    ```python
    >>> ids = torch.tensor([[5, 9, 7, 2, 9, 7], [5, 9, 7, 2, 3, 4]])  # 9: <disc_emb>, 7: <gen_emb>, 2: end of turn
    >>> assistant_token_positions(ids[:1], 7, disc_emb_id=9, end_ids=[2]).tolist()
    [5]
    >>> assistant_token_positions(ids, 7, disc_emb_id=9, end_ids=[2])
    Traceback (most recent call last):
    ...
    ValueError: Batch row(s) [1]: the last <gen_emb> is inside the prompt (its instruction), not after a rewrite. ...

    ```
    """
    if not end_ids:
        raise ValueError("Reading a generated token needs the end-of-turn ids: set config.end_of_turn_token_ids.")
    positions = last_token_positions(input_ids, token_id, token_name)
    last_token_positions(input_ids, disc_emb_id, "<disc_emb>")  # every row has one
    first_disc = (input_ids == disc_emb_id).int().argmax(dim=1)
    steps = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    is_end = torch.isin(input_ids, torch.tensor(end_ids, device=input_ids.device))
    between = is_end & (steps > first_disc[:, None]) & (steps < positions[:, None])
    prompt_only = (~between.any(dim=1)).nonzero().flatten().tolist()
    if prompt_only:
        raise ValueError(
            f"Batch row(s) {prompt_only}: the last {token_name} is inside the prompt (its instruction), not after a "
            "rewrite. Pass the teacher-forced sequence (prompt, rewrite, then the token), or call "
            "generate_embeddings to write the rewrite."
        )
    return positions


def normalize_embeddings(embeddings: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """L2-normalise along the last dimension (in float32 for stability), or return as is."""
    return F.normalize(embeddings.float(), p=2, dim=-1).to(embeddings.dtype) if normalize else embeddings


def labelled_token_loss(
    hidden_states: torch.Tensor, labels: torch.LongTensor, lm_head: torch.nn.Module
) -> tuple[torch.Tensor, torch.LongTensor]:
    """Next-token cross-entropy on the labelled tokens only: `(B, L, D)`, `(B, L)` -> `(mean loss, token count)`.

    Position `t` predicts `labels[:, t + 1]`; positions whose target is -100 are skipped before the LM head runs,
    so a training step costs `rewrite tokens x vocab` logits instead of `sequence x vocab`. Equal to the usual
    causal-LM loss (mean over labelled tokens, in float32). No labelled token gives a zero loss that still has a
    gradient path.

    ```python
    >>> head = torch.nn.Linear(4, 10, bias=False)
    >>> loss, count = labelled_token_loss(torch.randn(1, 3, 4), torch.tensor([[-100, 7, 2]]), head)
    >>> int(count)
    2

    ```
    """
    targets = labels[:, 1:]
    keep = targets != -100  # (B, L-1)
    logits = lm_head(hidden_states[:, :-1][keep]).float()  # (T, V)
    count = keep.sum()
    if logits.shape[0] == 0:
        return logits.sum(), count
    return F.cross_entropy(logits, targets[keep]), count


# --------------------------------------------------------------------------- outputs


@dataclass
class RimeEmbeddingOutput(ModelOutput):
    """
    Output of [`RimeForEmbedding.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Language-modelling loss on `labels` (e.g. the rewrite and `<gen_emb>` in training).
        embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Discriminative embeddings: last-layer hidden state at each row's last `<disc_emb>`, L2-normalised if
            `config.normalize`.
        gen_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`, *optional*):
            With `return_gen_embeddings=True`: generative embeddings read from teacher-forced sequences, at each
            row's last `<gen_emb>` (training), normalised like `embeddings`.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            The backbone's last-layer hidden states (after its final norm).
        logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`, *optional*):
            LM logits over every position, when `output_logits=True`.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Every layer's hidden states, when `output_hidden_states=True`.
    """

    loss: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    gen_embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class RimeGenerationOutput(ModelOutput):
    """
    Output of [`RimeForEmbedding.generate_embeddings`].

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Generative embeddings: last-layer hidden state at the generated (or appended) `<gen_emb>`.
        disc_embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Discriminative embeddings read from the same prefill, at `<disc_emb>`.
        sequences (`torch.LongTensor` of shape `(batch_size, new_length)`):
            The new tokens only (rewrite, then `<gen_emb>`), right-padded with the pad token.
        num_new_tokens (`torch.LongTensor` of shape `(batch_size,)`):
            Tokens the model generated, counting a generated `<gen_emb>` but not an appended one.
        finished (`torch.BoolTensor` of shape `(batch_size,)`):
            Whether the model generated `<gen_emb>` itself. `False` means it ran out of `max_new_tokens` or ended
            its turn first; `<gen_emb>` was then appended after its tokens (an end-of-turn token dropped).
    """

    embeddings: torch.FloatTensor | None = None
    disc_embeddings: torch.FloatTensor | None = None
    sequences: torch.LongTensor | None = None
    num_new_tokens: torch.LongTensor | None = None
    finished: torch.BoolTensor | None = None


# --------------------------------------------------------------------------- generation helpers


# The sampling settings `generate` applies after every logits processor, each with the value that turns it off.
SAMPLING_SETTINGS = {
    "temperature": 1.0,
    "top_h": None,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}


def sampling_warpers(generation_config) -> LogitsProcessorList:
    """The warpers `generate` samples through for `generation_config` (temperature, top-k, top-p, ...), in its order.

    ```python
    >>> from transformers import GenerationConfig
    >>> [type(w).__name__ for w in sampling_warpers(GenerationConfig(temperature=0.5, top_k=20))]
    ['TemperatureLogitsWarper', 'TopKLogitsWarper']

    ```
    """
    config = generation_config
    warpers = LogitsProcessorList()
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if getattr(config, "top_h", None) is not None:
        warpers.append(TopHLogitsWarper(top_h=config.top_h))
    if config.top_k is not None and config.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=config.top_p))
    if config.min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=config.min_p))
    if config.typical_p is not None and config.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(mass=config.typical_p))
    if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
        warpers.append(EpsilonLogitsWarper(epsilon=config.epsilon_cutoff))
    if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
        warpers.append(EtaLogitsWarper(epsilon=config.eta_cutoff))
    return warpers


class GenEmbLogitsProcessor(LogitsProcessor):
    """Makes every row end with `<gen_emb>`, and records which rows did not choose it themselves.

    It runs last among the logits processors, on the scores every other processor has shaped:

    - greedy (`warpers=None`): where the best token ends the turn, `<gen_emb>` is emitted instead (exactly the token
      the model would otherwise have stopped on), flagged as substituted;
    - sampling: it draws the token itself, from the final sampling distribution (the scores, then `warpers`:
      temperature, top-k, top-p, ...), since `generate` would apply those after it. A drawn end-of-turn token
      becomes `<gen_emb>`, flagged as substituted, so `P(<gen_emb>)` is the end-of-turn plus `<gen_emb>` mass of
      that distribution. The returned scores allow only the drawn token, which `generate`'s own sampling then keeps;
    - once `max_new_tokens` tokens were generated without `<gen_emb>`, it is forced (substituted).
    """

    def __init__(
        self,
        gen_emb_id: int,
        end_ids: list[int],
        prompt_length: int,
        max_new_tokens: int,
        batch_size: int,
        device: torch.device,
        warpers: LogitsProcessorList | None = None,
    ):
        self.gen_emb_id = gen_emb_id
        self.end_ids = torch.tensor(sorted(set(end_ids) - {gen_emb_id}), dtype=torch.long, device=device)
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens
        self.warpers = warpers
        self.seen_gen_emb = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.substituted = torch.zeros(batch_size, dtype=torch.bool, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        if step > 0:
            self.seen_gen_emb |= input_ids[:, -1] == self.gen_emb_id
        active = ~self.seen_gen_emb  # (B,) rows still writing their rewrite
        if step >= self.max_new_tokens:
            substitute = active
        elif self.warpers is not None:
            probabilities = self.warpers(input_ids, scores.float()).softmax(dim=-1)
            choice = torch.multinomial(probabilities, num_samples=1).squeeze(1)  # (B,)
            substitute = active & torch.isin(choice, self.end_ids)
            self.substituted |= substitute
            choice = torch.where(substitute, self.gen_emb_id, choice)
            chosen = torch.full_like(scores, float("-inf"))
            chosen[torch.arange(len(choice), device=scores.device), choice] = 0.0
            return chosen
        elif len(self.end_ids) == 0:
            return scores
        else:  # greedy: does the best token end the turn? (amax, several times faster than argmax on CPU)
            substitute = active & (scores[:, self.end_ids].amax(dim=-1) >= scores.amax(dim=-1))
        if not bool(substitute.any()):  # the common case: leave the scores untouched, no copy
            return scores
        self.substituted |= substitute
        scores = scores.clone()
        scores[substitute] = float("-inf")
        scores[substitute, self.gen_emb_id] = 0.0
        return scores


class StopAfterGenEmb(StoppingCriteria):
    """A row is done once its `<gen_emb>` has been fed back through the model (one token after it)."""

    def __init__(self, gen_emb_id: int, prompt_length: int):
        self.gen_emb_id = gen_emb_id
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        # generate keeps a stopped row stopped, so only the step right after <gen_emb> needs to say so
        if input_ids.shape[1] - self.prompt_length < 2:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return input_ids[:, -2] == self.gen_emb_id


class LastLayerCapture:
    """Forward hook on the text decoder that keeps only what embeddings need.

    From the prefill it keeps the states at `prefill_positions` (`(B, D)`); from each decode step the state of the
    single new position (`(B, D)`). Nothing else is stored, unlike `output_hidden_states=True`, which keeps every
    layer at every step.
    """

    def __init__(self, decoder: torch.nn.Module, prefill_positions: torch.LongTensor):
        self.decoder = decoder
        self.prefill_positions = prefill_positions
        self.prefill_states: torch.Tensor | None = None
        self.step_states: list[torch.Tensor] = []
        self._handle = None

    def _hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        if self.prefill_states is None:
            self.prefill_states = gather_positions(hidden, self.prefill_positions)
        elif hidden.shape[1] == 1:
            self.step_states.append(hidden[:, -1])
        else:
            raise RuntimeError("RIME generation expects one token per decoding step (no assisted decoding).")

    def __enter__(self):
        self._handle = self.decoder.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


GREEDY_DEFAULTS = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
# generate arguments that swap its one-token-per-step loop for another (assisted decoding, a Hub decoding method)
OTHER_DECODING_LOOPS = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit", "custom_generate")


def check_decoding(generate_kwargs: dict) -> None:
    """Refuse, before any model work, the decoding modes the embedding reader cannot follow (beam search, assisted
    decoding, several greedy copies), with a `ValueError` saying why."""
    kwargs = {**GREEDY_DEFAULTS, **generate_kwargs}
    sampling = bool(kwargs["do_sample"])
    copies = kwargs.get("num_return_sequences", 1)
    copies = 1 if copies is None else copies
    if kwargs.get("num_beams", 1) != 1:
        raise ValueError(
            "generate_embeddings decodes one hypothesis per row (greedy or sampling); beam search is not supported: "
            "beams are reordered between steps, so the states read at <gen_emb> would belong to other beams."
        )
    loops = [k for k in OTHER_DECODING_LOOPS if kwargs.get(k) is not None]
    if loops:
        raise ValueError(f"generate_embeddings reads one new token per step; {loops} would change the decoding loop.")
    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"num_return_sequences must be a positive integer, got {copies!r}.")
    if copies > 1 and not sampling:
        raise ValueError(
            f"num_return_sequences={copies} needs do_sample=True: greedy decoding writes the same rewrite every time."
        )


# --------------------------------------------------------------------------- model


class RimePreTrainedModel(PreTrainedModel):
    config_class = RimeConfig
    base_model_prefix = "rime"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module):
        self.vlm._init_weights(module)


class RimeForEmbedding(RimePreTrainedModel):
    r"""
    A Qwen-VL backbone (`self.vlm`, a stock `...ForConditionalGeneration`, so it can generate) read out as a RIME
    embedding model.

    - [`~RimeForEmbedding.forward`]: one pass, discriminative embedding at `<disc_emb>` (and the LM loss on
      `labels` for training).
    - [`~RimeForEmbedding.generate_embeddings`]: greedy rewrite, then the generative embedding at `<gen_emb>`,
      plus the discriminative embedding from the same prefill.

    `from_pretrained` loads both this class's own checkpoints and the published RIME / UME-R1 layout (a plain
    `qwen2_vl` checkpoint whose tokenizer has `<gen_emb>` / `<disc_emb>`).

    Example:

    ```python
    >>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor
    >>> processor = tiny_rime_processor()
    >>> model = tiny_rime_model(processor=processor)
    >>> out = model.generate_embeddings(**processor(text=["a red car"], mode="gen", return_tensors="pt"),
    ...                                 max_new_tokens=4)
    >>> tuple(out.embeddings.shape), tuple(out.disc_embeddings.shape)
    ((1, 64), (1, 64))

    ```
    """

    def __init__(self, config: RimeConfig, vlm: PreTrainedModel | None = None):
        super().__init__(config)
        self.vlm = vlm if vlm is not None else AutoModelForImageTextToText.from_config(config.vlm_config)
        self._backbone_inputs = set(inspect.signature(self.vlm.model.forward).parameters) - {"kwargs", "self"}
        self.post_init()

    def get_input_embeddings(self):
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.vlm.get_output_embeddings()

    @property
    def text_decoder(self) -> torch.nn.Module:
        """The backbone's text model; its output is the last-layer hidden state after the final norm."""
        return self.vlm.model.language_model

    def _embedding_token_id(self, name: str) -> int:
        token_id = getattr(self.config, f"{name}_token_id")
        if token_id is None:
            raise ValueError(
                f"config.{name}_token_id is not set; build the model with a RimeProcessor "
                f"(`processor.apply_token_ids(model.config)`) or load it with `from_pretrained`."
            )
        return token_id

    def _disc_positions(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """Where each row's disc embedding is read: its last `<disc_emb>`, plus `config.disc_token_offset`."""
        positions = last_token_positions(input_ids, self._embedding_token_id("disc_emb"), "<disc_emb>")
        return offset_positions(positions, self.config.disc_token_offset, input_ids.shape[1])

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        return_gen_embeddings: bool = False,
        output_logits: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> RimeEmbeddingOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids from [`RimeProcessor`]; each row must contain `<disc_emb>` (with `pooling="token"`).
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real tokens, 0 for padding (either side).
            pixel_values (`torch.Tensor` of shape `(num_patches, patch_dim)`, *optional*):
                Flattened image patches from the processor.
            image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`, *optional*):
                Patch grid of each image.
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Next-token targets (-100 is ignored); adds the mean causal-LM `loss` to the output. The LM head only
                runs on labelled positions (see [`labelled_token_loss`]).
            return_gen_embeddings (`bool`, *optional*, defaults to `False`):
                Also read `gen_embeddings` at each row's last `<gen_emb>`: with a teacher-forced gen-mode sequence
                (prompt, rewrite, `<gen_emb>`), one pass gives the disc embedding, the gen embedding and the LM loss.
                A row whose last `<gen_emb>` is the one named in the gen instruction (a prompt without its rewrite)
                is an error (see [`assistant_token_positions`]).
            output_logits (`bool`, *optional*):
                Also return the LM logits over every position.
            output_hidden_states (`bool`, *optional*):
                Also return every layer's hidden states.
            return_dict (`bool`, *optional*):
                Return a [`RimeEmbeddingOutput`] (default) or a tuple.
            use_cache (`bool`, *optional*):
                Accepted for API compatibility; the embedding pass never builds a cache.
            kwargs:
                Other backbone inputs (`mm_token_type_ids`, `position_ids`, ...) are passed on; unknown keys (such
                as sentence-transformers' bookkeeping) are ignored.

        Returns:
            [`RimeEmbeddingOutput`] with `embeddings` of shape `(batch_size, hidden_size)`.
        """
        return_dict = return_dict if return_dict is not None else True
        backbone_kwargs = {k: v for k, v in kwargs.items() if k in self._backbone_inputs}
        outputs = self.vlm.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            output_hidden_states=output_hidden_states,
            use_cache=False,
            return_dict=True,
            **backbone_kwargs,
        )
        hidden = outputs.last_hidden_state  # (B, L, D)
        if self.config.pooling == "token":
            if input_ids is None:
                raise ValueError("pooling='token' needs `input_ids` to find the embedding token.")
            positions = self._disc_positions(input_ids)
        else:
            mask = attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)
            positions = last_nonpad_positions(mask)
        embeddings = normalize_embeddings(gather_positions(hidden, positions), self.config.normalize)  # (B, D)
        gen_embeddings = None
        if return_gen_embeddings:
            if self.config.pooling != "token" or input_ids is None:
                raise ValueError("return_gen_embeddings reads `<gen_emb>`: it needs input_ids and pooling='token'.")
            gen_positions = assistant_token_positions(
                input_ids,
                self._embedding_token_id("gen_emb"),
                self._embedding_token_id("disc_emb"),
                self.stop_token_ids(),
            )
            gen_embeddings = normalize_embeddings(gather_positions(hidden, gen_positions), self.config.normalize)

        head = self.vlm.get_output_embeddings()
        loss = labelled_token_loss(hidden, labels, head)[0] if labels is not None else None
        logits = head(hidden) if output_logits else None  # (B, L, V)
        output = RimeEmbeddingOutput(
            loss=loss,
            embeddings=embeddings,
            gen_embeddings=gen_embeddings,
            last_hidden_state=hidden,
            logits=logits,
            hidden_states=outputs.hidden_states if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()

    def stop_token_ids(self, eos_token_id: int | list[int] | None = None) -> list[int]:
        """The tokens that end a rewrite early: `config.end_of_turn_token_ids` plus the end-of-sequence ids
        (`eos_token_id`, by default the backbone's `generation_config`), `<gen_emb>` excluded.

        Inference turns them into `<gen_emb>` and Refine-RL ends its rollouts on them, so both stop on the same
        tokens.
        """
        if eos_token_id is None:
            eos_token_id = self.vlm.generation_config.eos_token_id
        eos = eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        ids = {*(self.config.end_of_turn_token_ids or []), *(i for i in eos if i is not None)}
        return sorted(ids - {self.config.gen_emb_token_id})

    @torch.no_grad()
    def generate_embeddings(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        **generate_kwargs,
    ) -> RimeGenerationOutput:
        r"""
        Write the rewrite and read the generative embedding at `<gen_emb>`.

        Decoding is greedy unless `do_sample=True` is passed, whatever the checkpoint's `generation_config` asks
        for; its repetition penalty and n-gram blocking are not applied either unless passed here. With sampling,
        the checkpoint's temperature / top-k / top-p apply (override them here), and an end of turn counts as
        `<gen_emb>` in the final sampling distribution. A row stops at `<gen_emb>`; if it ends its turn (an
        end-of-sequence id of the generation config or of `eos_token_id`, or `config.end_of_turn_token_ids`) or
        reaches `max_new_tokens` first, `<gen_emb>` is appended after its tokens and read there (`finished=False`).
        `<gen_emb>` listed among the end-of-sequence ids changes nothing. Only the needed last-layer states are
        kept: a hook on the text decoder reads the `<disc_emb>` state from the prefill and one state per decoding
        step, and the row's `<gen_emb>` is fed through one extra step.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Left-padded gen-mode prompts from [`RimeProcessor`] (`mode="gen"`).
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                The prompt's attention mask.
            max_new_tokens (`int`, *optional*):
                Rewrite budget (`<gen_emb>` excluded); defaults to `config.max_new_tokens`.
            generate_kwargs:
                Image inputs (`pixel_values`, `image_grid_thw`, ...) and any `generate` argument (`do_sample`,
                `temperature`, `logits_processor`, `stopping_criteria`, ...). With `do_sample=True`,
                `num_return_sequences=k` draws `k` rewrites per prompt (rows `i * k ... i * k + k - 1` of the
                output belong to prompt `i`). Beam search and assisted decoding are refused: the embeddings are read
                one decoded token at a time.

        Returns:
            [`RimeGenerationOutput`], with `batch_size * num_return_sequences` rows.
        """
        if self.config.pooling != "token":
            raise ValueError("generate_embeddings reads embedding tokens; it needs config.pooling='token'.")
        gen_id = self._embedding_token_id("gen_emb")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generate_embeddings needs left-padded prompts (RimeProcessor pads on the left).")
        budget = max_new_tokens if max_new_tokens is not None else self.config.max_new_tokens
        if budget < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {budget}.")
        kwargs = {**GREEDY_DEFAULTS, **generate_kwargs}
        sampling = bool(kwargs["do_sample"])
        copies = kwargs.get("num_return_sequences", 1)
        copies = 1 if copies is None else copies
        check_decoding(generate_kwargs)
        disc_positions = self._disc_positions(input_ids).repeat_interleave(copies)
        batch_size, prompt_length = input_ids.shape[0] * copies, input_ids.shape[1]

        base_config = kwargs.get("generation_config") or self.vlm.generation_config
        end_ids = self.stop_token_ids(kwargs.get("eos_token_id", base_config.eos_token_id))
        warpers = None
        if sampling:  # our processor samples from the final distribution; generate's own warpers are turned off
            settings = copy.deepcopy(base_config)
            settings.update(do_sample=True, **{k: kwargs[k] for k in SAMPLING_SETTINGS if k in kwargs})
            warpers = sampling_warpers(settings)
            kwargs.update(SAMPLING_SETTINGS)
        gen_processor = GenEmbLogitsProcessor(
            gen_id, end_ids, prompt_length, budget, batch_size, input_ids.device, warpers=warpers
        )
        kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []), gen_processor])
        kwargs["stopping_criteria"] = StoppingCriteriaList(
            [*kwargs.get("stopping_criteria", []), StopAfterGenEmb(gen_id, prompt_length)]
        )
        # <gen_emb> is never an end-of-sequence id here: generate would stop before feeding it through the model
        kwargs["eos_token_id"] = end_ids or None
        pad_id = self.vlm.generation_config.pad_token_id
        pad_id = pad_id if pad_id is not None else min(end_ids, default=0)
        pad_id = kwargs.setdefault("pad_token_id", pad_id)
        # <gen_emb> may come after `budget` tokens, and one more step feeds it through the model.
        kwargs["max_new_tokens"] = budget + 2
        kwargs["return_dict_in_generate"] = False
        kwargs["use_cache"] = True  # one token per step: the capture reads each step's single new state

        with LastLayerCapture(self.text_decoder, disc_positions) as capture:
            sequences = self.vlm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        new_tokens = sequences[:, prompt_length:]  # (B, T)
        is_gen = new_tokens == gen_id
        gen_steps = is_gen.int().argmax(dim=1)  # (B,) first <gen_emb>
        # only possible if a caller's stopping criterion cut generation short
        if not bool(is_gen.any(dim=1).all()) or int(gen_steps.max()) >= len(capture.step_states):
            raise RuntimeError("Generation stopped before every row's <gen_emb> was read; check stopping_criteria.")
        step_states = torch.stack(capture.step_states, dim=0)  # (T-1, B, D): state of new token t at index t
        rows = torch.arange(batch_size, device=input_ids.device)
        gen_states = step_states[gen_steps, rows]  # (B, D)
        finished = ~gen_processor.substituted

        width = int(gen_steps.max()) + 1
        keep = torch.arange(width, device=input_ids.device)[None, :] <= gen_steps[:, None]
        kept = torch.where(keep, new_tokens[:, :width], torch.full_like(new_tokens[:, :width], pad_id))
        return RimeGenerationOutput(
            embeddings=normalize_embeddings(gen_states, self.config.normalize),
            disc_embeddings=normalize_embeddings(capture.prefill_states, self.config.normalize),
            sequences=kept,
            num_new_tokens=gen_steps + finished.long(),
            finished=finished,
        )

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, preset: str | None = None, **kwargs):
        """Load a RIME checkpoint, or a backbone checkpoint in the published RIME-2B / UME-R1 layout.

        Pass `tokenizer=` to read the RIME token ids of a published checkpoint from an already-loaded tokenizer.

        A published checkpoint is fed as its family was trained: `text_only_image="blank"` and the settings of its
        `preset` (`"rime"`, or `"ume-r1"`, the default when the name or path contains `UME-R1`; see `PRESETS`).
        A RIME checkpoint keeps its saved settings unless `preset` is given. RIME settings passed as keyword
        arguments (`text_only_image=None`, `max_new_tokens=...`) always win.

        For the published layout (a plain `qwen2_vl`-style `config.json`), the backbone is loaded with its own
        class (so legacy weight names map correctly), every weight must be present (a missing, unexpected or
        mismatched backbone weight is an error), and the RIME token ids are read from the checkpoint's tokenizer
        (or the `tokenizer` keyword argument).

        Before any model is built the checkpoint is checked (see `check_checkpoint`): its `model_type` must be
        `rime` or a supported backbone (a directory's own code is never run, whatever `trust_remote_code` says),
        weights are read from safetensors only, and, for a local directory, the token-embedding shape stored in
        the safetensors headers must match the `vocab_size` x `hidden_size` of `config.json`.
        """
        pretrained_model_name_or_path, model_type = check_checkpoint(pretrained_model_name_or_path, kwargs)
        if model_type != cls.config_class.model_type:
            return cls.from_backbone_checkpoint(pretrained_model_name_or_path, preset=preset, **kwargs)
        if preset is not None:
            for name, value in PRESETS[preset_for(pretrained_model_name_or_path, preset)].items():
                kwargs.setdefault(name, value)
        kwargs.pop("tokenizer", None)  # token ids are in the config already
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        _raise_on_random_weights(pretrained_model_name_or_path, info)
        return (model, info) if wants_info else model

    @classmethod
    def from_backbone_checkpoint(
        cls, path: str | os.PathLike, tokenizer=None, preset: str | None = None, **kwargs
    ) -> RimeForEmbedding:
        """Wrap a backbone checkpoint whose tokenizer has the RIME tokens (the published layout).

        Keyword arguments named like a RIME setting (`max_new_tokens`, `query_instruction`, ...; see `RIME_FIELDS`)
        configure RIME, over the published settings (`published_settings`: the blank image for text-only items and
        the `preset`'s prompt); every other one (`dtype`, `device_map`, `attn_implementation`,
        `quantization_config`, ...) goes to the backbone's `from_pretrained`, so the weights load as asked.

        A tokenizer without the RIME tokens (a stock Qwen-VL backbone) is refused before the weights load. To
        start training from such a backbone, pass `tokenizer=processor.tokenizer` of a `RimeProcessor` (which adds
        the tokens).
        """
        path, model_type = check_checkpoint(path, kwargs)
        if model_type == cls.config_class.model_type:
            raise ValueError(f"{path} is a RIME checkpoint, not a backbone one: load it with `from_pretrained`.")
        kwargs.pop("config", None)
        chosen = {k: kwargs.pop(k) for k in list(kwargs) if k in RIME_FIELDS and k != "vlm_config"}
        rime_kwargs = published_settings(path, preset, **chosen)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, **select_hub_kwargs(kwargs))
        # Check the RIME tokens before the weights load: a stock backbone fails here, fast.
        vocab = tokenizer.get_vocab()
        token_ids = {}
        for name, default in (("disc_emb", DISC_EMB_TOKEN), ("gen_emb", GEN_EMB_TOKEN)):
            token = rime_kwargs.get(f"{name}_token", default)
            if token not in vocab:
                raise ValueError(
                    f"The tokenizer of {path} has no {token}; this is not a RIME / UME-R1 checkpoint. To train from a "
                    "stock Qwen-VL backbone, pass `tokenizer=processor.tokenizer` of a RimeProcessor (it adds the "
                    "RIME tokens) to RimeForEmbedding.from_pretrained."
                )
            token_ids[f"{name}_token_id"] = vocab[token]
        vlm, info = AutoModelForImageTextToText.from_pretrained(
            path, output_loading_info=True, trust_remote_code=False, **kwargs
        )
        _raise_on_random_weights(path, info)
        # Building the outer config resets the attention backend of the (shared) backbone config; keep the one
        # the backbone was loaded with. Its dtype is the one the weights now have.
        config = RimeConfig(
            vlm_config=vlm.config, attn_implementation=vlm.config._attn_implementation, dtype=vlm.dtype, **rime_kwargs
        )
        for name, token_id in token_ids.items():
            setattr(config, name, token_id)
        config.end_of_turn_token_ids = [vocab[t] for t in ("<|im_end|>", "<|endoftext|>") if t in vocab]
        # as `from_pretrained` records it (not saved): a PEFT adapter trained on this model names it as its base
        config.name_or_path = os.fspath(path)
        rows = vlm.get_input_embeddings().num_embeddings
        if max(config.disc_emb_token_id, config.gen_emb_token_id) >= rows:
            raise ValueError(f"RIME token ids exceed the embedding table of {path} ({rows} rows).")
        return cls(config, vlm=vlm).eval()


def _raise_on_random_weights(path, loading_info: dict) -> None:
    """A missing, unexpected or mismatched weight would leave part of the model random: refuse it."""
    problems = {k: sorted(loading_info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        detail = "; ".join(f"{k}: {v[:5]}{' ...' if len(v) > 5 else ''}" for k, v in problems.items())
        raise ValueError(f"Checkpoint {path} does not match the model ({detail}); refusing random weights.")


# --------------------------------------------------------------------------- checks before loading

# Weight files that `torch.load` would unpickle (which can run code): refused.
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def check_checkpoint(path, kwargs: dict):
    """Check a checkpoint before anything is built, and set the safe loading options in `kwargs` (in place).

    - `trust_remote_code` is dropped and `use_safetensors=True` set (`use_safetensors=False` is an error);
    - a local path (see `local_model_dir`) must be a directory (`FileNotFoundError` otherwise) and must hold
      safetensors weights, not only pickled ones (`*.bin`, `*.pt`, ...), and must be a model, not a PEFT adapter
      alone (`RimeEncoder.from_pretrained` loads one, merged into its base);
    - `config.json` must be valid JSON with `model_type` `rime` (with a `vlm_config`) or a supported backbone;
    - for a local directory, the token-embedding shape in the safetensors headers must be the config's text
      `vocab_size` x `hidden_size` (only the headers are read).

    Returns the path (with `~` expanded) and the checkpoint's `model_type`. Every error is a `ValueError` naming
    the file, except the missing directory.
    """
    kwargs.pop("trust_remote_code", None)  # never run a directory's own code: every supported type is built in
    if kwargs.get("use_safetensors") is False:
        raise ValueError("RIME loads safetensors only; `use_safetensors=False` is not supported.")
    kwargs["use_safetensors"] = True
    subfolder = kwargs.get("subfolder") or ""
    directory = local_model_dir(path, subfolder)
    if directory is not None:
        if os.fspath(path).startswith("~"):
            path = os.path.expanduser(os.fspath(path))
        refuse_adapter_dir(directory)
        refuse_pickled_weights(directory)
    config = kwargs.get("config")
    if isinstance(config, PreTrainedConfig):
        config_file = "the `config` argument"
        model_type = config.model_type
        check_model_type(model_type, config.to_dict(), config_file)
    else:
        source = config if config is not None else path
        config_dict, config_file = read_config_dict(source, subfolder, kwargs)
        model_type = config_dict.get("model_type")
        check_model_type(model_type, config_dict, config_file)
        config = None
        if directory is not None:
            rest = {k: v for k, v in config_dict.items() if k != "model_type"}
            if model_type == RimeConfig.model_type:
                config = RimeConfig.from_dict(rest)
            else:
                config = AutoConfig.for_model(model_type, **rest)
    if directory is not None:
        check_embedding_shape(directory, config, config_file)
    return path, model_type


def local_model_dir(path, subfolder: str = "") -> str | None:
    """The local model directory `path` (joined with `subfolder`) names, or `None` for a Hub repository id.

    A path is local when it exists, is a `PathLike`, is absolute, starts with `.` or `~`, or holds more than one
    separator (a Hub id holds one: `org/name`). A local path that is not a directory is a `FileNotFoundError`,
    rather than a confusing Hub error.
    """
    name = os.fspath(path)
    local = (
        isinstance(path, os.PathLike)
        or os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count(os.sep) > 1
        or os.path.exists(name)
    )
    if not local:
        return None
    directory = os.path.join(os.path.expanduser(name), subfolder) if subfolder else os.path.expanduser(name)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model directory not found: {directory}")
    return directory


def refuse_adapter_dir(directory: str) -> None:
    """Raise a `ValueError` pointing to `RimeEncoder.from_pretrained` when `directory` holds a PEFT adapter (an
    `adapter_config.json`) and no model (no `config.json` or no `model*.safetensors` weights)."""
    names = os.listdir(directory)
    if "adapter_config.json" not in names:
        return
    if "config.json" in names and any(n.startswith("model") and n.endswith(".safetensors") for n in names):
        return
    raise ValueError(
        f"{directory} holds a PEFT adapter (adapter_config.json), not a complete model. Load it with "
        "`transformers_rime.RimeEncoder.from_pretrained`, which loads the base model the adapter names and merges "
        "the adapter in (it needs peft: pip install 'transformers_rime[train]'); `rime export` turns it into a "
        "complete model directory."
    )


def refuse_pickled_weights(directory: str) -> None:
    """Raise a `ValueError` naming the files when `directory` holds pickled weights and no safetensors ones."""
    names = sorted(os.listdir(directory))
    if any(name.endswith(".safetensors") for name in names):
        return
    pickled = [os.path.join(directory, name) for name in names if name.endswith(PICKLED_WEIGHT_SUFFIXES)]
    if pickled:
        raise ValueError(
            f"RIME loads safetensors only, and {directory} holds pickled weights ({', '.join(pickled)}), which can "
            "run code when loaded. Convert them to safetensors (e.g. load them yourself in a trusted environment and "
            "`save_pretrained(..., safe_serialization=True)`)."
        )


def read_config_dict(source, subfolder: str, kwargs: dict) -> tuple[dict, str]:
    """`config.json` of `source` (a local directory or file, or a Hub id) as a dict, and the file's name.

    A local file that is missing is a `FileNotFoundError` and one that is not a JSON object a `ValueError`, each
    naming the file.
    """
    name = os.fspath(source)
    if os.path.isfile(os.path.expanduser(name)):
        config_file = os.path.expanduser(name)
    else:
        directory = local_model_dir(source, subfolder)
        if directory is None:  # a Hub id: transformers fetches (and checks) the file
            config_dict, _ = PreTrainedConfig.get_config_dict(source, **select_hub_kwargs(kwargs))
            return config_dict, f"config.json of {source}"
        config_file = os.path.join(directory, "config.json")
    try:
        with open(config_file, encoding="utf-8") as f:
            config_dict = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{config_file} not found: a model directory needs a config.json.") from None
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{config_file} is not valid JSON: {error}") from error
    if not isinstance(config_dict, dict):
        raise ValueError(f"{config_file} is not a JSON object.")
    return config_dict, config_file


def check_model_type(model_type, config_dict: dict, config_file: str) -> None:
    """Raise a `ValueError` naming `config_file` unless its `model_type` is one RIME builds itself, consistently
    with its content (a RIME config edited to a backbone `model_type` would build a default-size backbone)."""
    supported = (RimeConfig.model_type, *SUPPORTED_BACKBONES)
    if model_type not in supported:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} is not supported; RIME loads {', '.join(supported)} "
            "(it never runs a checkpoint's own code)."
        )
    has_vlm_config = isinstance(config_dict.get("vlm_config"), dict)
    if model_type != RimeConfig.model_type and "vlm_config" in config_dict:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} does not match its content, a RIME configuration (it has a "
            f"`vlm_config`). Set its model_type back to {RimeConfig.model_type!r}."
        )
    if model_type == RimeConfig.model_type and not has_vlm_config:
        raise ValueError(
            f"{config_file}: a {RimeConfig.model_type!r} configuration needs its backbone's `vlm_config`."
        )


def check_embedding_shape(directory: str, config: PreTrainedConfig, config_file: str) -> None:
    """Raise a `ValueError` naming both files and both shapes when a token-embedding tensor stored in the
    safetensors files of `directory` is not `config`'s text `vocab_size` x `hidden_size`. Reads headers only."""
    text_config = config.get_text_config()
    expected = (text_config.vocab_size, text_config.hidden_size)
    for weights_file, key, shape in embedding_shapes(directory):
        if shape != expected:
            raise ValueError(
                f"{config_file} does not match the weights in {weights_file}: the config describes a token "
                f"embedding of vocab_size x hidden_size = {expected}, the weights hold {key} of shape {shape}. "
                "Was config.json edited or copied from another model?"
            )


def embedding_shapes(directory: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """`(file, key, shape)` of every tensor whose key ends in `embed_tokens.weight` in the safetensors files of
    `directory` (found through `model.safetensors.index*.json` when sharded). Reads headers only."""
    names = sorted(os.listdir(directory))
    indexes = [n for n in names if n.startswith("model.safetensors.index") and n.endswith(".json")]
    targets: dict[str, list[str] | None] = {}
    for index in indexes:
        index_file = os.path.join(directory, index)
        try:
            with open(index_file, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            found = [(key, file) for key, file in weight_map.items() if key.endswith("embed_tokens.weight")]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index_file} is not a valid safetensors index: {error!r}") from error
        for key, file in found:
            targets.setdefault(file, []).append(key)
    if not indexes:
        targets = {name: None for name in names if name.endswith(".safetensors")}
    shapes = []
    for file, keys in targets.items():
        weights_file = os.path.join(directory, file)
        if not os.path.isfile(weights_file):
            continue  # a missing shard: transformers names it when loading
        try:
            with safe_open(weights_file, "pt") as f:
                for key in keys if keys is not None else [k for k in f.keys() if k.endswith("embed_tokens.weight")]:
                    shapes.append((weights_file, key, tuple(f.get_slice(key).get_shape())))
        except Exception as error:  # safetensors' own error type is not importable from a stable place
            raise ValueError(f"Cannot read the safetensors header of {weights_file}: {error}") from error
    return shapes


__all__ = ["RimeForEmbedding", "RimePreTrainedModel", "RimeEmbeddingOutput", "RimeGenerationOutput"]
