# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""How RIME drives `generate` for the generative embedding: the decoding checks, the logits processor that ends every
rewrite with `<gen_emb>`, the stopping criterion, the hook that keeps only the needed last-layer states, and the
reading of those states once `generate` returns. `RimeForEmbedding.generate_embeddings` puts them together.

This file ships to the Hub next to the weights (``trust_remote_code``): it imports only torch, ``transformers`` and
its sibling files.
"""

from __future__ import annotations

import copy

import torch
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from .pooling_rime import gather_positions


GREEDY_DEFAULTS = {"do_sample": False, "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}
# generate arguments that swap its one-token-per-step loop for another (assisted decoding, a Hub decoding method)
OTHER_DECODING_LOOPS = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit", "custom_generate")


def check_decoding(generate_kwargs: dict) -> None:
    """Refuse, before any model work, the decoding modes the embedding reader cannot follow (beam search, assisted
    decoding, several greedy copies), with a `ValueError` saying why."""
    kwargs = {**GREEDY_DEFAULTS, **generate_kwargs}
    sampling = bool(kwargs["do_sample"])
    copies = num_return_sequences(generate_kwargs)
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


def num_return_sequences(generate_kwargs: dict) -> int:
    """Rewrites drawn per prompt: `num_return_sequences` (`None` or absent: 1). `check_decoding` checks the value."""
    copies = generate_kwargs.get("num_return_sequences", 1)
    return 1 if copies is None else copies


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


def gen_emb_generate_kwargs(
    generate_kwargs: dict,
    base_config,
    gen_id: int,
    end_ids: list[int],
    prompt_length: int,
    budget: int,
    batch_size: int,
    device: torch.device,
    pad_token_id: int | None,
) -> tuple[dict, GenEmbLogitsProcessor]:
    """The `generate` arguments that write each row's rewrite and end it with `<gen_emb>`, and their
    `GenEmbLogitsProcessor` (which records the rows whose `<gen_emb>` was substituted).

    Decoding is greedy unless `generate_kwargs` sets `do_sample=True` (`GREEDY_DEFAULTS`); with sampling, the
    settings of `base_config` (the generation config in use) that `generate_kwargs` does not override are sampled
    through by the processor itself, and turned off in `generate`. The caller's logits processors and stopping
    criteria run first; `eos_token_id` becomes `end_ids` (never `<gen_emb>`); the pad id is the caller's, else
    `pad_token_id`, else the smallest end id; the budget leaves room for `<gen_emb>` and the step that feeds it
    through the model.
    """
    kwargs = {**GREEDY_DEFAULTS, **generate_kwargs}
    warpers = None
    if bool(kwargs["do_sample"]):  # our processor samples from the final distribution; generate's own are turned off
        settings = copy.deepcopy(base_config)
        settings.update(do_sample=True, **{k: kwargs[k] for k in SAMPLING_SETTINGS if k in kwargs})
        warpers = sampling_warpers(settings)
        kwargs.update(SAMPLING_SETTINGS)
    gen_processor = GenEmbLogitsProcessor(gen_id, end_ids, prompt_length, budget, batch_size, device, warpers=warpers)
    kwargs["logits_processor"] = LogitsProcessorList([*kwargs.get("logits_processor", []), gen_processor])
    kwargs["stopping_criteria"] = StoppingCriteriaList(
        [*kwargs.get("stopping_criteria", []), StopAfterGenEmb(gen_id, prompt_length)]
    )
    # <gen_emb> is never an end-of-sequence id here: generate would stop before feeding it through the model
    kwargs["eos_token_id"] = end_ids or None
    kwargs.setdefault("pad_token_id", pad_token_id if pad_token_id is not None else min(end_ids, default=0))
    # <gen_emb> may come after `budget` tokens, and one more step feeds it through the model.
    kwargs["max_new_tokens"] = budget + 2
    kwargs["return_dict_in_generate"] = False
    kwargs["use_cache"] = True  # one token per step: the capture reads each step's single new state
    return kwargs, gen_processor


def read_gen_emb(
    sequences: torch.LongTensor, prompt_length: int, gen_id: int, step_states: list[torch.Tensor], pad_id: int
) -> tuple[torch.Tensor, torch.LongTensor, torch.LongTensor]:
    """Read each row's `<gen_emb>` once `generate` returns: `(states at <gen_emb>, new tokens, <gen_emb> steps)`.

    `sequences` is `generate`'s output (prompt and new tokens) and `step_states` the decode-step states of a
    `LastLayerCapture`. The new tokens are cut after each row's first `<gen_emb>` and right-padded with `pad_id`.
    A row whose `<gen_emb>` was not fed through the model (only possible if a caller's stopping criterion cut
    generation short) is a `RuntimeError`.
    """
    new_tokens = sequences[:, prompt_length:]  # (B, T)
    is_gen = new_tokens == gen_id
    gen_steps = is_gen.int().argmax(dim=1)  # (B,) first <gen_emb>
    if not bool(is_gen.any(dim=1).all()) or int(gen_steps.max()) >= len(step_states):
        raise RuntimeError("Generation stopped before every row's <gen_emb> was read; check stopping_criteria.")
    states = torch.stack(step_states, dim=0)  # (T-1, B, D): state of new token t at index t
    rows = torch.arange(sequences.shape[0], device=sequences.device)
    gen_states = states[gen_steps, rows]  # (B, D)
    width = int(gen_steps.max()) + 1
    keep = torch.arange(width, device=sequences.device)[None, :] <= gen_steps[:, None]
    kept = torch.where(keep, new_tokens[:, :width], torch.full_like(new_tokens[:, :width], pad_id))
    return gen_states, kept, gen_steps


__all__ = [
    "GREEDY_DEFAULTS",
    "SAMPLING_SETTINGS",
    "GenEmbLogitsProcessor",
    "LastLayerCapture",
    "StopAfterGenEmb",
    "check_decoding",
    "gen_emb_generate_kwargs",
    "num_return_sequences",
    "read_gen_emb",
    "sampling_warpers",
]
