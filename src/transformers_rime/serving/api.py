"""`RimeEmbeddingAPI`: RIME behind LitServe's batching, answering OpenAI's `/v1/embeddings`.

LitServe gathers concurrent requests into one batch (`max_batch_size`, `batch_timeout`) and runs `predict` on it in
an inference worker. Each request is checked on its own (`decode_request`) and a bad one is answered with its own
400, never failing the others of its batch. In `predict` the batch's items are split by mode and rewrite budget,
so disc and gen work never share a forward pass, and each group is embedded with `RimeEncoder`'s batching.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import litserve as ls
import numpy as np
from fastapi.responses import JSONResponse

from ..encoder import RimeEncoder, RimeGeneration
from ..models.rime.processing_rime import PreparedItem
from .requests import EmbeddingRequest, RequestError, ServeLimits, parse_request


@dataclass
class Work:
    """A checked request and its prepared items (prompts rendered, media decoded, lengths bounded)."""

    request: EmbeddingRequest
    prepared: list[PreparedItem]


@dataclass
class Failure:
    """A request refused before any model work: answered with `status` and `message`."""

    status: int
    message: str


@dataclass
class Result:
    """A served request: its embeddings `(N, D)`, prompt and generated token counts, and in gen mode the rewrites."""

    request: EmbeddingRequest
    embeddings: np.ndarray
    prompt_tokens: int
    generated_tokens: int
    rewrites: list[tuple[str, bool]] | None


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """An error in the shape OpenAI's API (and so its client) uses."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


def encode_embedding(vector: np.ndarray, encoding_format: str):
    """A float list, or base64 of little-endian float32 (what the `openai` client decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


class RimeEmbeddingAPI(ls.LitAPI):
    """Serve a RIME model on `/v1/embeddings`.

    Args:
        model: a RIME directory or Hub id (loaded in each inference worker with `RimeEncoder.from_pretrained`).
        limits: the per-request [`ServeLimits`].
        model_name: the name `/v1/models` lists and responses carry (default: `model`).
        encode_batch_size: items per forward pass (or `generate` call) inside one server batch.
        max_length: longest prompt in tokens (default: the backbone's context).
        max_batch_size / batch_timeout: LitServe's request batching (requests per batch, seconds to wait).
        loading_kwargs: passed to `RimeEncoder.from_pretrained` (`dtype`, `attn_implementation`, ...).
    """

    def __init__(
        self,
        model: str,
        limits: ServeLimits | None = None,
        model_name: str | None = None,
        encode_batch_size: int = 16,
        max_length: int | None = None,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
        loading_kwargs: dict | None = None,
    ):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/v1/embeddings")
        self.model = model
        self.limits = limits or ServeLimits()
        self.model_name = model_name or str(model)
        self.encode_batch_size = encode_batch_size
        self.max_length = max_length
        self.loading_kwargs = loading_kwargs or {}
        self.encoder: RimeEncoder | None = None

    def setup(self, device):
        self.encoder = RimeEncoder.from_pretrained(self.model, device=device, **self.loading_kwargs)

    def decode_request(self, request: dict, **kwargs) -> Work | Failure:
        """Check the body and every item (media decoded, prompt rendered and bounded); a problem becomes a `Failure`
        for this request alone."""
        try:
            parsed = parse_request(request, self.limits, self.model_name, self.encoder.embedding_dim)
            name = "messages" if parsed.names == ["messages"] else "input"
            prepared = self.encoder.prepare(
                parsed.items, parsed.mode, parsed.role, parsed.instruction, self.max_length, name=name
            )
        except RequestError as error:
            return Failure(error.status, str(error))
        except (ValueError, TypeError, OSError) as error:  # the processor's own checks name the item
            return Failure(400, str(error))
        return Work(parsed, prepared)

    def batch(self, inputs):
        return list(inputs)

    def predict(self, batch: list[Work | Failure], **kwargs) -> list[Result | Failure]:
        """Embed every item of the batch's valid requests, grouped by (mode, rewrite budget)."""
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for request_index, work in enumerate(batch):
            if isinstance(work, Work):
                key = (work.request.mode, work.request.max_new_tokens)
                groups.setdefault(key, []).extend((request_index, i) for i in range(len(work.prepared)))
        vectors: dict[tuple[int, int], np.ndarray] = {}
        generations: dict[tuple[int, int], RimeGeneration] = {}
        for (mode, budget), members in groups.items():
            prepared = [batch[r].prepared[i] for r, i in members]
            embeddings, outputs = self.encoder._embed(
                prepared, mode, self.encode_batch_size, False, "query", budget, {}
            )
            embeddings = embeddings.cpu().numpy()
            for position, member in enumerate(members):
                vectors[member] = embeddings[position]
                if mode == "gen":
                    generations[member] = self.encoder.generation(*outputs[position])
            self.log("rime_items", (mode, len(members)))
            if mode == "gen":
                self.log("rime_generated_tokens", sum(generations[m].num_new_tokens for m in members))
        self.log("rime_batch_requests", len(batch))
        results = []
        for request_index, work in enumerate(batch):
            if isinstance(work, Failure):
                results.append(work)
                continue
            members = [(request_index, i) for i in range(len(work.prepared))]
            gen = [generations[m] for m in members] if work.request.mode == "gen" else None
            results.append(
                Result(
                    request=work.request,
                    embeddings=np.stack([vectors[m] for m in members]),
                    prompt_tokens=sum(item.num_tokens for item in work.prepared),
                    generated_tokens=sum(g.num_new_tokens for g in gen) if gen else 0,
                    rewrites=[(g.text, g.finished) for g in gen] if gen else None,
                )
            )
        return results

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output: Result | Failure, **kwargs):
        if isinstance(output, Failure):
            self.log("rime_refused_requests", output.status)
            return error_response(output.status, output.message)
        request = output.request
        data = []
        for index, vector in enumerate(output.embeddings):
            entry = {
                "object": "embedding",
                "index": index,
                "embedding": encode_embedding(vector, request.encoding_format),
            }
            if request.return_rewrite:
                entry["rewrite"], entry["finished"] = output.rewrites[index]
            data.append(entry)
        usage = {
            "prompt_tokens": output.prompt_tokens,
            "total_tokens": output.prompt_tokens + output.generated_tokens,
        }
        return {"object": "list", "data": data, "model": request.model, "usage": usage}
