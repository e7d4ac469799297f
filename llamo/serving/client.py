"""Python client for LLaMo served on vLLM: LLaMo messages in, answers out.

    client = LlamoVLLMClient("served/frontend", base_url="http://127.0.0.1:8000")
    client.complete([{"role": "user", "content": [{"type": "molecule", "smiles": "CCO"},
                                                  {"type": "text", "text": "Describe this molecule."}]}])

Molecules are featurized and projected here (CPU, `LlamoFrontEnd`); the vLLM server receives the whole prompt as
`prompt_embeds` (a base64 `torch.save` of a `[seq, hidden]` tensor in the model's dtype) on its completions endpoint,
the route vLLM documents for prompt embeddings. Sending the full prompt rather than only the graph vectors keeps the
tokenization exactly that of `LlamoProcessor`, so greedy answers are those of `model.generate`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pathlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import torch

from .frontend import LlamoFrontEnd


# Sampling fields passed on to vLLM (OpenAI names plus vLLM's extras). Nothing else from a caller reaches the engine.
SAMPLING_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
)


def encode_prompt_embeds(embeddings: torch.Tensor) -> str:
    """The wire format of vLLM's `prompt_embeds`: base64 of `torch.save` of a `[seq, hidden]` tensor."""
    if embeddings.dim() != 2:
        raise ValueError(f"prompt embeddings must be [seq, hidden], got shape {tuple(embeddings.shape)}")
    buffer = io.BytesIO()
    torch.save(embeddings.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Completion:
    """One answer: text, generated token ids (when the engine returns them), why it stopped, token counts."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] | None = None
    raw: dict = field(default_factory=dict, repr=False)


class LlamoVLLMClient:
    """Featurize LLaMo conversations locally and generate with a vLLM server started with `--enable-prompt-embeds`.

    Args:
        frontend: a `LlamoFrontEnd` or the `frontend/` folder written by `llamo-export-vllm`.
        base_url: the vLLM server (keep it private: it accepts arbitrary tensors).
        model: the server's `--served-model-name`.
        timeout: seconds per request.
    """

    def __init__(
        self,
        frontend: LlamoFrontEnd | str | pathlib.Path,
        base_url: str = "http://127.0.0.1:8000",
        model: str = "llamo",
        timeout: float = 600.0,
    ):
        self.frontend = frontend if isinstance(frontend, LlamoFrontEnd) else LlamoFrontEnd.from_pretrained(frontend)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout

    def build_request(self, messages: list[dict], stream: bool = False, **sampling: Any) -> dict:
        """The completions request for one conversation. Raises `ValueError` (the processor's message) for an invalid
        SMILES or message, and for unknown sampling fields."""
        unknown = sorted(set(sampling) - set(SAMPLING_FIELDS))
        if unknown:
            raise ValueError(f"unsupported sampling fields {unknown}; supported: {list(SAMPLING_FIELDS)}")
        prompt = self.frontend.prompt_embeddings(messages)
        body = {"model": self.model, "prompt_embeds": encode_prompt_embeds(prompt.embeddings), "stream": stream}
        body.update({key: value for key, value in sampling.items() if value is not None})
        body["return_token_ids"] = True  # the answer's ids (per chunk when streaming): see `answer_text`
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def decode(self, token_ids: Sequence[int]) -> str:
        """Answer text of generated ids, as `processor.decode(..., skip_special_tokens=True)` gives it after generate."""
        return self.frontend.processor.decode(list(token_ids), skip_special_tokens=True)

    def answer_text(self, choice: dict, token_ids: Sequence[int] | None) -> str:
        """The text of a finished choice. vLLM's incremental detokenizer drops a trailing incomplete UTF-8 sequence
        (an answer cut by max_tokens inside a multi-byte character); decoding the ids gives generate's text. When a
        stop string ended the answer (`stop_reason` is that string), vLLM's text is the one cut at it."""
        if token_ids is None or isinstance(choice.get("stop_reason"), str):
            return choice["text"]
        return self.decode(token_ids)

    def parse_completion(self, payload: dict) -> Completion:
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        token_ids = choice.get("token_ids")
        return Completion(
            text=self.answer_text(choice, token_ids),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            token_ids=token_ids,
            raw=payload,
        )

    async def acomplete(self, messages: list[dict], http: httpx.AsyncClient | None = None, **sampling: Any) -> Completion:
        """One answer (async). Featurization runs in a worker thread so concurrent requests overlap."""
        body = await asyncio.to_thread(self.build_request, messages, False, **sampling)
        return self.parse_completion(await self.post_completion(body, http))

    async def post_completion(self, body: dict, http: httpx.AsyncClient | None = None) -> dict:
        """POST a prepared body to `/v1/completions`; raises `httpx.HTTPStatusError` with vLLM's message."""
        async with _client_or(http, self.timeout) as session:
            response = await session.post(f"{self.base_url}/v1/completions", json=body)
            _raise_for_status(response)
            return response.json()

    async def astream(self, messages: list[dict], http: httpx.AsyncClient | None = None, **sampling: Any) -> AsyncIterator[dict]:
        """Stream one answer: vLLM's completion chunks as dicts (text in `choices[0]["text"]`, usage in the last)."""
        body = await asyncio.to_thread(self.build_request, messages, True, **sampling)
        async for chunk in self.stream_completion(body, http):
            yield chunk

    async def stream_completion(self, body: dict, http: httpx.AsyncClient | None = None) -> AsyncIterator[dict]:
        async with (
            _client_or(http, self.timeout) as session,
            session.stream("POST", f"{self.base_url}/v1/completions", json=body) as response,
        ):
            if response.status_code >= 400:
                await response.aread()
                _raise_for_status(response)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                yield json.loads(data)

    async def acomplete_batch(
        self, conversations: Sequence[list[dict]], concurrency: int = 64, **sampling: Any
    ) -> list[Completion]:
        """Answers to many conversations, at most `concurrency` in flight; vLLM batches them continuously."""
        limit = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=self.timeout, limits=limits) as http:

            async def one(messages):
                async with limit:
                    return await self.acomplete(messages, http=http, **sampling)

            return list(await asyncio.gather(*(one(messages) for messages in conversations)))

    def complete(self, messages: list[dict], **sampling: Any) -> Completion:
        """One answer (blocking)."""
        return asyncio.run(self.acomplete(messages, **sampling))

    def complete_batch(self, conversations: Sequence[list[dict]], concurrency: int = 64, **sampling: Any) -> list[Completion]:
        """Many answers (blocking), in the order of `conversations`."""
        return asyncio.run(self.acomplete_batch(conversations, concurrency=concurrency, **sampling))


class _client_or:
    """`async with`: the given client (left open), or a fresh one closed afterwards."""

    def __init__(self, http: httpx.AsyncClient | None, timeout: float):
        self.http, self.timeout, self.own = http, timeout, None

    async def __aenter__(self) -> httpx.AsyncClient:
        if self.http is not None:
            return self.http
        self.own = httpx.AsyncClient(timeout=self.timeout)
        return self.own

    async def __aexit__(self, *exc) -> None:
        if self.own is not None:
            await self.own.aclose()


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            payload = response.json()
            error = payload.get("error")  # {"error": {"message": ...}} or vLLM's older {"object": "error", "message": ...}
            message = (error.get("message") if isinstance(error, dict) else None) or payload.get("message") or response.text
        except ValueError:
            message = response.text
        raise httpx.HTTPStatusError(
            f"vLLM answered {response.status_code}: {message}", request=response.request, response=response
        )


__all__ = ["LlamoVLLMClient", "Completion", "encode_prompt_embeds", "SAMPLING_FIELDS"]
