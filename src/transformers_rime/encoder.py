"""`RimeEncoder`: the everyday entry point (model + processor + batching, progress and search)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from huggingface_hub import CommitOperationAdd, HfApi
from tqdm.auto import tqdm
from transformers.utils import logging

from .adapters import is_adapter_dir, is_peft_model, load_adapter_dir, merged_copy
from .export import write_pipeline_files, write_sentence_transformers_files
from .index import INDEX_BACKENDS, build_index
from .inputs import RimeInput, parse_input
from .model_card import create_model_card
from .models.rime.configuration_rime import MODES, ROLES
from .models.rime.generation_rime import check_decoding
from .models.rime.modeling_rime import RimeForEmbedding
from .models.rime.processing_rime import PROCESSOR_KWARGS, PreparedItem, RimeProcessor, check_choice
from .teacher_forcing import Rewrite, append_target_tokens, target_ids


@dataclass
class RimeGeneration:
    """One item's generative encoding: its rewrite and both embeddings."""

    text: str
    """The rewrite as the model wrote it: the new tokens before `<gen_emb>` (special tokens skipped)."""
    finished: bool
    """Whether the model wrote `<gen_emb>` itself (otherwise it was appended)."""
    num_new_tokens: int
    """Tokens the model generated (an appended `<gen_emb>` not counted)."""
    embedding: np.ndarray
    """Generative embedding, `(dim,)`."""
    disc_embedding: np.ndarray
    """Discriminative embedding of the same item, `(dim,)`."""
    token_ids: tuple[int, ...] = ()
    """The rewrite's tokens as generated: the new tokens before `<gen_emb>` (`len == num_new_tokens - finished`).
    `encode_with_rewrites` takes them to reproduce `embedding` exactly; `text` re-tokenized may split differently."""


logger = logging.get_logger(__name__)

# `from_pretrained` options that only concern the model's weights (the processor has no use for them)
MODEL_LOADING_KWARGS = (
    "attn_implementation",
    "device_map",
    "max_memory",
    "offload_folder",
    "quantization_config",
    "low_cpu_mem_usage",
)


# A gen-mode call in which more rewrites than this hit the budget logs a warning: their embeddings were read at an
# appended <gen_emb>, after a cut rewrite.
UNFINISHED_WARNING_SHARE = 0.05


def warn_if_unfinished(finished, budget: int | None) -> float:
    """The share of rewrites that hit the budget (`finished=False`); logs a warning when it is over 5%.

    ```python
    >>> warn_if_unfinished([True, True, True, False], 8)  # logs: 1 of 4 rewrites (25.0%) hit the budget ...
    0.25

    ```
    """
    finished = [bool(f) for f in finished]
    share = (len(finished) - sum(finished)) / len(finished) if finished else 0.0
    if share > UNFINISHED_WARNING_SHARE and budget != 0:  # a budget of 0 asks for no rewrite at all
        logger.warning(
            f"{len(finished) - sum(finished)} of {len(finished)} rewrites ({share:.1%}) hit the budget of "
            f"{budget} new tokens before <gen_emb>; their gen embeddings follow a cut rewrite. Raise max_new_tokens "
            "(a published model's own rewrites should fit in it)."
        )
    return share


def _check_one_generation_per_item(generate_kwargs: dict) -> None:
    copies = generate_kwargs.get("num_return_sequences")
    if copies not in (None, 1):
        raise ValueError(
            f"num_return_sequences={copies}: the encoder returns one embedding per item. To draw several rewrites of "
            "an item, repeat it in the inputs (with do_sample=True), or call "
            "model.generate_embeddings(..., do_sample=True, num_return_sequences=k)."
        )


@dataclass(frozen=True)
class SearchHit:
    """One search result: the corpus position of a hit and its cosine similarity."""

    corpus_id: int
    score: float


class RimeEncoder:
    """Embed texts, images, videos and documents with a RIME model, in `disc` or `gen` mode.

    The model's config is the single source of truth for prompts: the encoder copies its instructions and token
    strings onto the processor.

    Args:
        model ([`RimeForEmbedding`]): the embedding model.
        processor ([`RimeProcessor`]): its processor.

    Example:

    ```python
    >>> from transformers_rime import RimeEncoder
    >>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor, random_image
    >>> processor = tiny_rime_processor()
    >>> encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
    >>> queries = encoder.encode(["a red car", {"text": "what is shown?", "image": random_image()}], mode="gen",
    ...                          role="query", max_new_tokens=4)
    >>> queries.shape
    (2, 64)
    >>> hits = encoder.search(["a red car"], ["a blue bike", random_image()], top_k=1, query_mode="gen",
    ...                       corpus_mode="disc", max_new_tokens=4)
    >>> len(hits[0])
    1

    ```
    """

    def __init__(self, model: RimeForEmbedding, processor: RimeProcessor):
        self.model = model
        self.processor = processor
        processor.adopt_config(model.config)

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        preset: str | None = None,
        **kwargs,
    ) -> RimeEncoder:
        """Load model and processor from a RIME directory, a Hub id, or a published RIME / UME-R1 checkpoint.

        A local PEFT adapter directory (`adapter_config.json` and no model weights, as `peft_model.save_pretrained`
        writes) loads as the base model its `base_model_name_or_path` names, with the adapter merged in (this needs
        peft, the `train` extra); the processor is the adapter directory's own when it has one, else the base's.

        Args:
            pretrained_model_name_or_path: local directory or Hub repository id.
            device: where to run (default: CUDA if available, else CPU). Not with `device_map`, which places the
                weights itself.
            dtype: model dtype (e.g. `torch.bfloat16`); default: the checkpoint's.
            preset: `"rime"` or `"ume-r1"`: how a published checkpoint is fed (prompt, tags, budget). By default
                `"ume-r1"` when the name or path contains `UME-R1`, else `"rime"`; a RIME directory keeps its own
                settings unless this is given. See `RimeForEmbedding.from_pretrained`.
            kwargs: passed to both `from_pretrained` calls (`revision`, `local_files_only`, ...); RIME settings
                (`text_only_image`, `max_new_tokens`, ...) win over the preset's; the model-loading options
                (`attn_implementation`, `device_map`, `quantization_config`, ...) go to the model only and the
                processor's (`video_as_images`, `max_video_frames`, `size`, ...) to the processor only.

        Example:

        ```python
        >>> encoder = RimeEncoder.from_pretrained("zhibinlan/UME-R1-2B")  # doctest: +SKIP
        >>> encoder.model.config.text_only_image, encoder.model.config.max_new_tokens  # doctest: +SKIP
        ('blank', 8192)

        ```
        """
        if device is not None and kwargs.get("device_map") is not None:
            raise ValueError("Pass either `device` or `device_map`, not both.")
        model_kwargs = {k: v for k, v in kwargs.items() if k not in PROCESSOR_KWARGS}
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        # A checkpoint's own code is never run (the model refuses it too), and only the model reads weights.
        processor_kwargs = {
            k: v
            for k, v in kwargs.items()
            if k not in MODEL_LOADING_KWARGS and k not in ("trust_remote_code", "use_safetensors")
        }
        if isinstance(pretrained_model_name_or_path, str) and pretrained_model_name_or_path.startswith("~"):
            pretrained_model_name_or_path = os.path.expanduser(pretrained_model_name_or_path)
        # The model first, and without the processor's tokenizer: `RimeProcessor` adds missing RIME tokens to its
        # tokenizer (as training from a stock backbone needs), which would let a stock backbone through with random
        # RIME-token embeddings. The model reads the checkpoint's own tokenizer and refuses one without the tokens;
        # its checks (directory, config, safetensors) also run before anything is built. `adopt_config` (in
        # `__init__`) then checks that model and processor agree on the token ids.
        if is_adapter_dir(pretrained_model_name_or_path, kwargs.get("subfolder")):
            model, processor = load_adapter_dir(pretrained_model_name_or_path, preset, model_kwargs, processor_kwargs)
        else:
            model = RimeForEmbedding.from_pretrained(pretrained_model_name_or_path, preset=preset, **model_kwargs)
            processor = RimeProcessor.from_pretrained(pretrained_model_name_or_path, preset=preset, **processor_kwargs)
        if not isinstance(processor, RimeProcessor):  # pragma: no cover - from_pretrained returns cls
            raise TypeError(f"Expected a RimeProcessor, got {type(processor).__name__}.")
        if kwargs.get("device_map") is None:
            model = model.to(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model.eval(), processor)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        model_card: bool = True,
        results=None,
        model_card_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        """Write one directory that every loader understands, with a model card.

        The directory holds the model (safetensors, `config.json` with `auto_map` and the RIME source files), the
        processor, the sentence-transformers files and a `README.md` model card. It loads with
        `RimeEncoder.from_pretrained`, `AutoModel` / `AutoProcessor.from_pretrained(..., trust_remote_code=True)` and
        `SentenceTransformer(..., trust_remote_code=True)`, the last two without `transformers_rime` installed, as does
        `pipeline("feature-extraction" | "image-feature-extraction", model=..., trust_remote_code=True)`.

        Args:
            save_directory: where to write (created if needed).
            model_card: write `README.md` (an existing one is overwritten).
            results: evaluation results for the card: a mapping or a JSON path (see `transformers_rime.model_card`).
            model_card_kwargs: passed to [`create_model_card`] (`model_id`, `base_model`, `license`, `datasets`, ...).
            kwargs: passed to the model's `save_pretrained` (e.g. `max_shard_size`).
        """
        # A PEFT model (LoRA around the RimeForEmbedding) is saved merged, from a copy: self.model stays as it is.
        model = merged_copy(self.model) if is_peft_model(self.model) else self.model
        model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
        write_sentence_transformers_files(save_directory, model.config)
        write_pipeline_files(save_directory)
        if model_card:
            card = create_model_card(model, self.processor, results=results, **(model_card_kwargs or {}))
            card.save(os.path.join(save_directory, "README.md"))

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload RIME model",
        create_pr: bool = False,
        results=None,
        model_card_kwargs: dict | None = None,
        api: HfApi | None = None,
    ):
        """Save to a temporary directory (as `save_pretrained`, model card included) and upload it in one commit.

        Args:
            repo_id: the Hub repository (`"user/name"`), created if missing.
            private: visibility of a newly created repository.
            token: Hub token (default: the logged-in user's).
            revision: branch to commit to.
            commit_message: the commit message.
            create_pr: open a pull request instead of committing to the branch.
            results / model_card_kwargs: as in `save_pretrained`; the card's usage snippets load `repo_id`.
            api: the `huggingface_hub.HfApi` to use (e.g. one with a custom endpoint).

        Returns:
            The `huggingface_hub.CommitInfo` of the upload.
        """
        api = api or HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        card_kwargs = {"model_id": repo_id, **(model_card_kwargs or {})}
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, results=results, model_card_kwargs=card_kwargs)
            operations = [
                CommitOperationAdd(
                    path_in_repo=os.path.relpath(path, folder).replace(os.sep, "/"), path_or_fileobj=path
                )
                for root, _, names in sorted(os.walk(folder))
                for path in (os.path.join(root, name) for name in sorted(names))
            ]
            return api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def embedding_dim(self) -> int:
        return self.model.config.hidden_size

    # ------------------------------------------------------------------ encoding

    def encode(
        self,
        inputs,
        mode: str = "disc",
        role: str = "query",
        instruction: str | None = None,
        batch_size: int = 8,
        show_progress_bar: bool | None = None,
        convert_to: str = "numpy",
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        **generate_kwargs,
    ) -> np.ndarray | torch.Tensor:
        """Embed a list of items (or one item).

        Every item is checked before any model work (see `prepare`): a bad one raises an error naming its index in
        `inputs`, and nothing is embedded.

        Args:
            inputs: one item or a list of items: `str` (text, or an image path by extension), `PIL.Image`, a list
                of frames (video), or a dict with `text` / `image` / `images` / `video`.
            mode: `"disc"` (one forward pass) or `"gen"` (rewrite, then embed at `<gen_emb>`).
            role: `"query"` or `"document"`, selects the instruction.
            instruction: overrides the role's instruction.
            batch_size: items per forward / generate call. Items are sorted by length to limit padding; an item's
                embedding does not depend on its neighbours.
            show_progress_bar: `None` shows a bar on a terminal when there is more than one batch.
            convert_to: `"numpy"` (float32 array) or `"tensor"` (torch, on the model's device).
            max_new_tokens: rewrite budget in gen mode (default `config.max_new_tokens`).
            max_length: refuse prompts longer than this many tokens (default: the backbone's context length; RIME
                never truncates).
            generate_kwargs: passed to `generate` in gen mode (e.g. `do_sample=True`).

        Returns:
            Embeddings of shape `(len(inputs), dim)`, or `(dim,)` for a single item; L2-normalised.
        """
        check_choice("convert_to", convert_to, ("numpy", "tensor"))
        single, items = _as_items(inputs)
        prepared = self.prepare(items, mode, role, instruction, max_length)
        self._check_call(batch_size, mode, max_new_tokens, generate_kwargs)
        embeddings, _ = self._embed(
            prepared, mode, batch_size, show_progress_bar, role, max_new_tokens, generate_kwargs
        )
        result = embeddings[0] if single else embeddings
        return result.cpu().numpy() if convert_to == "numpy" else result

    def generate(
        self,
        inputs,
        role: str = "query",
        instruction: str | None = None,
        batch_size: int = 8,
        show_progress_bar: bool | None = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        **generate_kwargs,
    ) -> list[RimeGeneration] | RimeGeneration:
        """Write each item's rewrite and return it with both embeddings (gen mode, in full).

        Takes the arguments of `encode`. Returns one [`RimeGeneration`] per item, in input order (one alone for a
        single item). When more than 5% of the rewrites hit the budget (`finished=False`), a warning gives their
        share (as `encode` in gen mode does).
        """
        single, items = _as_items(inputs)
        prepared = self.prepare(items, "gen", role, instruction, max_length)
        self._check_call(batch_size, "gen", max_new_tokens, generate_kwargs)
        _, outputs = self._embed(prepared, "gen", batch_size, show_progress_bar, role, max_new_tokens, generate_kwargs)
        results = [self.generation(output, row) for output, row in outputs]
        return results[0] if single else results

    def generation(self, output, row: int) -> RimeGeneration:
        """Row `row` of a `RimeGenerationOutput` as a [`RimeGeneration`]: the rewrite decoded, both embeddings."""
        n = int(output.num_new_tokens[row])
        rewrite_length = n - int(output.finished[row])  # the tokens before <gen_emb>
        tokens = output.sequences[row, :rewrite_length]
        return RimeGeneration(
            text=self.processor.tokenizer.decode(tokens, skip_special_tokens=True),
            finished=bool(output.finished[row]),
            num_new_tokens=n,
            embedding=output.embeddings[row].float().cpu().numpy(),
            disc_embedding=output.disc_embeddings[row].float().cpu().numpy(),
            token_ids=tuple(tokens.tolist()),
        )

    def encode_with_rewrites(
        self,
        inputs: list,
        rewrites: list[Rewrite],
        role: str = "query",
        instruction: str | None = None,
        batch_size: int = 8,
        show_progress_bar: bool | None = None,
        convert_to: str = "numpy",
        max_length: int | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Gen embeddings of items with given rewrites, teacher-forced: nothing is generated.

        Each item becomes its gen-mode prompt, then `rewrites[i]`, then `<gen_emb>`, the sequence stage-1 training
        builds (`transformers_rime.teacher_forcing`); one forward pass reads the embedding at that `<gen_emb>`. With
        the rewrite the model wrote itself, given as its token ids (`RimeGeneration.token_ids`), this is the
        embedding `encode(..., mode="gen")` returns (up to float rounding); with another rewrite, it measures how
        much the embedding depends on the rewrite (`transformers_rime.evaluation.rewrite_sensitivity`).

        Every item and rewrite is checked before any model work: errors name `input i` or `rewrite i`, the index in
        the caller's lists.

        Args:
            inputs (`list`): the items, as in `encode` (a list, even of one).
            rewrites (`list`): one per item, `len(rewrites) == len(inputs)`:
                - token ids (a list, tuple, 1-D array or tensor of ints), the rewrite as the model wrote it, before
                  its `<gen_emb>`: used as they are, so a generated rewrite is reproduced exactly;
                - a `str`, tagged and tokenized as training does (plain text is wrapped in the rewrite tags; text that
                  starts with a tag is kept verbatim). Decoding a generated rewrite and tokenizing it again may give
                  other tokens, hence another embedding: pass `RimeGeneration.token_ids` to reproduce one;
                - `None` or `""`: the rewrite removed, `<gen_emb>` right after the prompt.
            role / instruction: as in `encode`.
            batch_size (`int`): items per forward pass; items are sorted by sequence length (prompt and rewrite).
            show_progress_bar: as in `encode`.
            convert_to (`str`): `"numpy"` (float32 array) or `"tensor"` (torch, on the model's device).
            max_length (`int`, *optional*): refuse sequences (prompt, rewrite and `<gen_emb>`) longer than this many
                tokens (default: the backbone's context length).

        Returns:
            Gen embeddings of shape `(len(inputs), dim)`, normalised like `encode`'s.

        Example:

        ```python
        >>> from transformers_rime.testing import tiny_rime_model, tiny_rime_processor
        >>> processor = tiny_rime_processor()
        >>> encoder = RimeEncoder(tiny_rime_model(processor=processor), processor)
        >>> generated = encoder.generate(["a red car", "a black cat"], max_new_tokens=4)
        >>> own = encoder.encode_with_rewrites(["a red car", "a black cat"], [g.token_ids for g in generated])
        >>> bool(np.allclose(own, [g.embedding for g in generated], atol=1e-4))
        True
        >>> encoder.encode_with_rewrites(["a red car", "a black cat"], ["a crimson automobile", None]).shape
        (2, 64)

        ```
        """
        check_choice("convert_to", convert_to, ("numpy", "tensor"))
        if not isinstance(inputs, (list, tuple)) or not isinstance(rewrites, (list, tuple)):
            raise TypeError("encode_with_rewrites takes a list of items and a list of rewrites, one per item.")
        if len(rewrites) != len(inputs):
            raise ValueError(f"{len(inputs)} inputs but {len(rewrites)} rewrites; give one rewrite per input.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        prepared = self.prepare(list(inputs), "gen", role, instruction, max_length)
        targets = [target_ids(self.processor, rewrite, f"rewrite {i}") for i, rewrite in enumerate(rewrites)]
        lengths = [item.num_tokens + len(target) for item, target in zip(prepared, targets)]
        limit = max_length if max_length is not None else self.max_length
        too_long = [i for i, n in enumerate(lengths) if limit is not None and n > limit]
        if too_long:
            i = too_long[0]
            raise ValueError(
                f"input {i}: with its rewrite the sequence is {lengths[i]} tokens, longer than max_length={limit}. "
                "Nothing is truncated: shorten the rewrite or raise max_length."
            )
        embeddings = torch.empty(len(prepared), self.embedding_dim, dtype=torch.float32, device=self.device)
        pad_token_id = self.processor.tokenizer.pad_token_id
        for indices in self._batches(lengths, batch_size, show_progress_bar, f"Encoding (gen, {role}, rewrites)"):
            features = self.processor.collate([prepared[i] for i in indices])
            features = append_target_tokens(features, [targets[i] for i in indices], pad_token_id)
            del features["labels"]  # embeddings only: the LM head need not run
            with torch.inference_mode():
                batch_embeddings = self.model(**features.to(self.device), return_gen_embeddings=True).gen_embeddings
            _check_finite(batch_embeddings, indices)
            embeddings[indices] = batch_embeddings.float()
        return embeddings.cpu().numpy() if convert_to == "numpy" else embeddings

    def rewrite_budget(self, max_new_tokens: int | None = None) -> int:
        """The rewrite budget gen mode runs with: `max_new_tokens`, else the model config's default."""
        return max_new_tokens if max_new_tokens is not None else self.model.config.max_new_tokens

    @property
    def max_length(self) -> int | None:
        """The default prompt-length limit: the backbone's context length (`max_position_embeddings`)."""
        return getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    def prepare(
        self,
        items: list,
        mode: str = "disc",
        role: str = "query",
        instruction: str | None = None,
        max_length: int | None = None,
        name: str = "input",
    ) -> list[PreparedItem]:
        """Check every item completely, with no model work: parse it, decode its media, render its prompt and
        bound its length (`max_length`, default `self.max_length`). The first bad item raises an error naming its
        index in `items` (as `"{name} {index}"`). The decoded items are what batching uses, so nothing is decoded
        twice.
        """
        check_choice("mode", mode, MODES)
        check_choice("role", role, ROLES)
        limit = max_length if max_length is not None else self.max_length
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"max_length must be a positive integer, got {limit!r}.")
        instruction = self.processor.instruction_for(role, instruction)
        prepared = []
        for index, item in enumerate(items):
            where = f"{name} {index}"
            parsed = item if isinstance(item, RimeInput) else parse_input(item, index, name)
            prepared.append(self.processor.prepare_item(parsed, mode, instruction, where, limit))
        return prepared

    def _check_call(self, batch_size: int, mode: str, max_new_tokens: int | None, generate_kwargs: dict) -> None:
        """Refuse bad call arguments before any model work."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 0):
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
        if mode == "gen":
            _check_one_generation_per_item(generate_kwargs)
            check_decoding(generate_kwargs)
        elif generate_kwargs:
            raise TypeError(f"Generation arguments {sorted(generate_kwargs)} only apply with mode='gen'.")

    def _embed(self, prepared, mode, batch_size, show_progress_bar, role, max_new_tokens, generate_kwargs):
        """Embeddings `(N, D)` float32 of prepared items, in their order, and in gen mode each item's
        `(RimeGenerationOutput, row)`. Raises a `FloatingPointError` naming the items whose embedding is not finite."""
        embeddings = torch.empty(len(prepared), self.embedding_dim, dtype=torch.float32, device=self.device)
        outputs: list = [None] * len(prepared)
        desc = f"Encoding ({mode}, {role})" if mode == "disc" else f"Generating ({role})"
        lengths = [item.num_tokens for item in prepared]
        for indices in self._batches(lengths, batch_size, show_progress_bar, desc):
            # no dtype cast for pixel_values: the backbone casts them to its own dtype
            features = self.processor.collate([prepared[i] for i in indices]).to(self.device)
            with torch.inference_mode():
                if mode == "disc":
                    batch_embeddings = self.model(**features).embeddings
                else:
                    output = self.model.generate_embeddings(
                        **features, max_new_tokens=max_new_tokens, **generate_kwargs
                    )
                    batch_embeddings = output.embeddings
                    for row, index in enumerate(indices):
                        outputs[index] = (output, row)
            _check_finite(batch_embeddings, indices)
            embeddings[indices] = batch_embeddings.float()
        if mode == "gen":
            warn_if_unfinished([out.finished[row] for out, row in outputs], self.rewrite_budget(max_new_tokens))
        return embeddings, outputs

    def _batches(self, lengths: list[int], batch_size: int, show_progress_bar: bool | None, desc: str):
        """Yield batches of indices, longest sequences first (`lengths` in tokens), so each batch holds items of
        similar length."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        # None: tqdm decides (shown on a terminal), and never for a single batch
        disable = (
            True
            if len(batches) <= 1 and show_progress_bar is None
            else (None if show_progress_bar is None else not show_progress_bar)
        )
        yield from tqdm(batches, desc=desc, disable=disable)

    def encode_queries(self, inputs, mode: str = "disc", **kwargs):
        """`encode(inputs, role="query", ...)`."""
        return self.encode(inputs, mode=mode, role="query", **kwargs)

    def encode_documents(self, inputs, mode: str = "disc", **kwargs):
        """`encode(inputs, role="document", ...)`."""
        return self.encode(inputs, mode=mode, role="document", **kwargs)

    # ------------------------------------------------------------------ similarity and search

    @staticmethod
    def similarity(a, b):
        """Cosine similarity matrix of two sets of (normalised) embeddings: `(N, D)`, `(M, D)` -> `(N, M)`."""
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            a, b = torch.as_tensor(a), torch.as_tensor(b)
            return torch.atleast_2d(a).float() @ torch.atleast_2d(b).float().T
        return np.atleast_2d(a).astype(np.float32) @ np.atleast_2d(b).astype(np.float32).T

    def search(
        self,
        queries,
        corpus=None,
        top_k: int = 10,
        query_mode: str = "disc",
        corpus_mode: str = "disc",
        corpus_embeddings: np.ndarray | torch.Tensor | None = None,
        query_instruction: str | None = None,
        corpus_instruction: str | None = None,
        batch_size: int = 8,
        show_progress_bar: bool | None = None,
        index: str = "exact",
        **encode_kwargs,
    ) -> list[list[SearchHit]] | list[SearchHit]:
        """Rank `corpus` for each query. Any mode pair works (Cross-Mode Alignment puts both in one space).

        Args:
            queries: items to search with (see `encode`).
            corpus: items to search in; may be omitted when `corpus_embeddings` is given.
            top_k: hits per query (at most the corpus size).
            query_mode: `"disc"` or `"gen"` for the queries.
            corpus_mode: `"disc"` or `"gen"` for the corpus (ignored with `corpus_embeddings`).
            corpus_embeddings: a precomputed corpus index (`(M, D)`), e.g. from `encode_documents`.
            query_instruction / corpus_instruction: override the role instructions.
            index: `"exact"` (torch; equal scores come back in corpus order) or `"faiss"` (the `eval` extra).
            encode_kwargs: passed to `encode` (`max_new_tokens`, ...).

        Returns:
            For each query, `top_k` [`SearchHit`]s sorted by decreasing score (one list for a single query). Every
            query and corpus item is checked before the first forward pass; errors name `query i` or
            `corpus item i`.
        """
        check_choice("index", index, INDEX_BACKENDS)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}.")
        if corpus_embeddings is None and corpus is None:
            raise ValueError("search needs `corpus` or `corpus_embeddings`.")
        max_length, max_new_tokens = encode_kwargs.pop("max_length", None), encode_kwargs.pop("max_new_tokens", None)
        single, query_items = _as_items(queries)
        # every query and corpus item is checked before the first forward pass
        prepared_queries = self.prepare(query_items, query_mode, "query", query_instruction, max_length, "query")
        prepared_corpus = None
        if corpus_embeddings is None:
            corpus_items = _as_items(corpus)[1]
            prepared_corpus = self.prepare(
                corpus_items, corpus_mode, "document", corpus_instruction, max_length, "corpus item"
            )
        modes = {query_mode, corpus_mode} if prepared_corpus is not None else {query_mode}
        self._check_call(batch_size, "gen" if "gen" in modes else "disc", max_new_tokens, encode_kwargs)
        run = (batch_size, show_progress_bar)
        if prepared_corpus is not None:
            corpus_embeddings, _ = self._embed(
                prepared_corpus,
                corpus_mode,
                *run,
                "document",
                max_new_tokens,
                encode_kwargs if corpus_mode == "gen" else {},
            )
        query_embeddings, _ = self._embed(
            prepared_queries, query_mode, *run, "query", max_new_tokens, encode_kwargs if query_mode == "gen" else {}
        )
        scores, ids = build_index(corpus_embeddings, backend=index).search(query_embeddings, top_k)
        hits = [
            [SearchHit(int(i), float(v)) for v, i in zip(row_scores, row_ids)]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
        ]
        return hits[0] if single else hits


def _check_finite(embeddings: torch.Tensor, indices: list[int]) -> None:
    """Raise a `FloatingPointError` naming the inputs (positions `indices` of the batch rows) whose embedding is not
    finite."""
    bad = (~torch.isfinite(embeddings).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        raise FloatingPointError(
            f"Non-finite embeddings for input(s) {sorted(indices[row] for row in bad)}: the model produced "
            "NaN or inf (check the weights and the dtype; fp16 overflows where bf16 does not)."
        )


def _as_items(inputs) -> tuple[bool, list]:
    """`(single, items)`: one item (anything but a list or tuple, a string included) becomes a list of one."""
    if isinstance(inputs, (list, tuple)):
        return False, list(inputs)
    return True, [inputs]


__all__ = ["RimeEncoder", "RimeGeneration", "SearchHit"]
