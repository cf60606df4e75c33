# Copyright 2026 The transformers_rime authors. Licensed under the Apache License, Version 2.0.
"""RIME embedding model: discriminative and generative embeddings from one Qwen-VL backbone.

The model and its outputs live here; where embeddings are read is in `pooling_rime.py`, how `generate` is driven for
the generative embedding in `generation_rime.py`, and what is checked of a checkpoint before loading (and read of the
published layout) in `checkpoint_rime.py`.

This file ships to the Hub next to the weights (``trust_remote_code``): it imports only torch, ``transformers`` and
its sibling files.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText, AutoTokenizer, PreTrainedModel
from transformers.utils import ModelOutput

from .checkpoint_rime import check_checkpoint, end_of_turn_token_ids, published_token_ids, raise_on_random_weights
from .configuration_rime import (
    DISC_EMB_TOKEN,
    PRESETS,
    RIME_FIELDS,
    RimeConfig,
    preset_for,
    published_settings,
    select_hub_kwargs,
)
from .generation_rime import (
    LastLayerCapture,
    check_decoding,
    gen_emb_generate_kwargs,
    num_return_sequences,
    read_gen_emb,
)
from .pooling_rime import (
    assistant_token_positions,
    gather_positions,
    last_nonpad_positions,
    last_token_positions,
    normalize_embeddings,
    offset_positions,
)


# --------------------------------------------------------------------------- loss


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
        positions = last_token_positions(input_ids, self._embedding_token_id("disc_emb"), DISC_EMB_TOKEN)
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
        check_decoding(generate_kwargs)
        copies = num_return_sequences(generate_kwargs)
        disc_positions = self._disc_positions(input_ids).repeat_interleave(copies)
        batch_size, prompt_length = input_ids.shape[0] * copies, input_ids.shape[1]

        base_config = generate_kwargs.get("generation_config") or self.vlm.generation_config
        end_ids = self.stop_token_ids(generate_kwargs.get("eos_token_id", base_config.eos_token_id))
        kwargs, gen_processor = gen_emb_generate_kwargs(
            generate_kwargs,
            base_config,
            gen_id,
            end_ids,
            prompt_length,
            budget,
            batch_size,
            input_ids.device,
            pad_token_id=self.vlm.generation_config.pad_token_id,
        )
        with LastLayerCapture(self.text_decoder, disc_positions) as capture:
            sequences = self.vlm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        gen_states, kept, gen_steps = read_gen_emb(
            sequences, prompt_length, gen_id, capture.step_states, kwargs["pad_token_id"]
        )
        finished = ~gen_processor.substituted
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
        raise_on_random_weights(pretrained_model_name_or_path, info)
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
        token_ids = published_token_ids(vocab, path, rime_kwargs)
        vlm, info = AutoModelForImageTextToText.from_pretrained(
            path, output_loading_info=True, trust_remote_code=False, **kwargs
        )
        raise_on_random_weights(path, info)
        # Building the outer config resets the attention backend of the (shared) backbone config; keep the one
        # the backbone was loaded with. Its dtype is the one the weights now have.
        config = RimeConfig(
            vlm_config=vlm.config, attn_implementation=vlm.config._attn_implementation, dtype=vlm.dtype, **rime_kwargs
        )
        for name, token_id in token_ids.items():
            setattr(config, name, token_id)
        config.end_of_turn_token_ids = end_of_turn_token_ids(vocab)
        # as `from_pretrained` records it (not saved): a PEFT adapter trained on this model names it as its base
        config.name_or_path = os.fspath(path)
        rows = vlm.get_input_embeddings().num_embeddings
        if max(config.disc_emb_token_id, config.gen_emb_token_id) >= rows:
            raise ValueError(f"RIME token ids exceed the embedding table of {path} ({rows} rows).")
        return cls(config, vlm=vlm).eval()


__all__ = ["RimeForEmbedding", "RimePreTrainedModel", "RimeEmbeddingOutput", "RimeGenerationOutput"]
