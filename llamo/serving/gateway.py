"""HTTP gateway in front of a private vLLM server: OpenAI chat completions in LLaMo's message format.

    llamo-gateway --export_dir served/ --vllm_url http://127.0.0.1:8000 --port 8080

The gateway is the only public face. The vLLM server runs with `--enable-prompt-embeds`, which accepts arbitrary
tensors, so it binds 127.0.0.1 and only the gateway talks to it. A request's messages are rendered, featurized and
projected here; the engine gets a completions request built by the gateway alone (prompt embeddings + the sampling
fields in `SAMPLING_FIELDS`). An invalid SMILES or message is answered 400 with the processor's message and nothing
is sent to vLLM.

    curl -s localhost:8080/v1/chat/completions -H 'Content-Type: application/json' -d '{"messages": [{"role": "user",
      "content": [{"type": "molecule", "smiles": "CCO"}, {"type": "text", "text": "Describe this molecule."}]}],
      "max_tokens": 64, "temperature": 0}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict

from .client import SAMPLING_FIELDS, Completion, LlamoVLLMClient
from .frontend import LlamoFrontEnd


class ChatCompletionRequest(BaseModel):
    """OpenAI chat-completions request; message content may hold `{"type": "molecule", "smiles": ...}` items."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields (user, ...) that do not apply here

    model: str | None = None
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    n: int = 1
    stream: bool = False

    def sampling(self) -> dict[str, Any]:
        fields = {name: getattr(self, name, None) for name in SAMPLING_FIELDS}
        if self.max_completion_tokens is not None:
            fields["max_tokens"] = self.max_completion_tokens
        return {key: value for key, value in fields.items() if value is not None}


class APIError(Exception):
    """A request the gateway answers with an OpenAI error body (`error_response`) instead of a completion."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


class Gateway:
    """What the routes share, on `app.state.gateway`: the client that renders, featurizes and projects conversations
    and decodes the engine's answers, the model name served, and the pooled connection to the engine (open while the
    app runs: `lifespan`)."""

    def __init__(
        self,
        client: LlamoVLLMClient,
        served_model_name: str,
        max_connections: int = 256,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.client = client
        self.served_model_name = served_model_name
        self.limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.transport = transport
        self.http: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def engine_connection(self):
        self.http = httpx.AsyncClient(timeout=self.client.timeout, limits=self.limits, transport=self.transport)
        try:
            yield
        finally:
            await self.http.aclose()

    async def engine_ready(self) -> bool:
        try:
            upstream = await self.http.get(f"{self.client.base_url}/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return upstream.status_code == 200

    async def complete(self, body: dict) -> Completion:
        """The engine's answer to a prepared body; its errors as `APIError`s (its own status, or 502 unanswered)."""
        try:
            payload = await self.client.post_completion(body, self.http)
        except httpx.HTTPStatusError as error:
            raise APIError(error.response.status_code, str(error), "engine_error") from error
        except httpx.HTTPError as error:
            raise APIError(502, f"the vLLM server did not answer: {error!r}", "engine_unavailable") from error
        return self.client.parse_completion(payload)


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with app.state.gateway.engine_connection():
        yield


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDependency = Annotated[Gateway, Depends(get_gateway)]


def check_chat_request(request: ChatCompletionRequest, served_model_name: str) -> None:
    """Refuse what the gateway does not serve: several samples per request, another model."""
    if request.n != 1:
        raise APIError(400, "n must be 1: send one request per sample")
    if request.model not in (None, served_model_name):
        message = f"model {request.model!r} is not served here; this gateway serves {served_model_name!r}"
        raise APIError(404, message, "not_found_error")


def build_engine_request(client: LlamoVLLMClient, request: ChatCompletionRequest) -> dict:
    """The engine's completions body for a chat request (rendering, RDKit and the projector run here). An invalid
    SMILES or message is a 400 with the processor's or the chat template's message."""
    try:
        return client.build_request(request.messages, request.stream, **request.sampling())
    except (ValueError, TypeError, KeyError, TemplateError) as error:
        raise APIError(400, str(error)) from error


def chat_completion(completion: Completion, completion_id: str, created: int, model: str) -> dict:
    """An OpenAI chat completion (with the answer's token ids) for the engine's answer."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
                "token_ids": completion.token_ids,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


@dataclass
class ChunkEvents:
    """The server-sent events of one streamed chat completion."""

    completion_id: str
    created: int
    model: str

    def delta(self, delta: dict, finish_reason: str | None = None) -> str:
        return self._event({"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    def usage(self, usage: dict) -> str:
        return self._event({"choices": [], "usage": usage})

    def _event(self, fields: dict) -> str:
        chunk = {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return f"data: {json.dumps({**chunk, **fields})}\n\n"


def streamed_text(client: LlamoVLLMClient, choice: dict, emitted: str, token_ids: list[int]) -> str:
    """The text an engine chunk's choice adds to the `emitted` answer; the last one completes the text as the
    non-streamed answer is completed (`LlamoVLLMClient.answer_text`)."""
    text = choice.get("text") or ""
    if not choice.get("finish_reason"):
        return text
    final = client.answer_text({**choice, "text": emitted + text}, token_ids)
    return final[len(emitted) :] if final.startswith(emitted) else text


async def stream_chunks(gateway: Gateway, body: dict, events: ChunkEvents) -> AsyncIterator[str]:
    """vLLM's completion chunks as OpenAI chat-completion chunks (server-sent events)."""
    yield events.delta({"role": "assistant", "content": ""})
    emitted, token_ids = "", []
    try:
        async for chunk in gateway.client.stream_completion(body, gateway.http):
            for choice in chunk.get("choices") or []:
                token_ids += choice.get("token_ids") or []
                text = streamed_text(gateway.client, choice, emitted, token_ids)
                emitted += text
                if text or choice.get("finish_reason"):
                    yield events.delta({"content": text} if text else {}, choice.get("finish_reason"))
            if chunk.get("usage"):
                yield events.usage(chunk["usage"])
    except httpx.HTTPError as error:  # headers are sent: report in the stream, as OpenAI does
        yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'engine_error'}})}\n\n"
    yield "data: [DONE]\n\n"


router = APIRouter()


@router.get("/health")
async def health(gateway: GatewayDependency) -> JSONResponse:
    ready = await gateway.engine_ready()
    return JSONResponse(status_code=200 if ready else 503, content={"gateway": "ok", "engine": "ok" if ready else "unavailable"})


@router.get("/v1/models")
async def models(gateway: GatewayDependency) -> dict:
    return {"object": "list", "data": [{"id": gateway.served_model_name, "object": "model", "owned_by": "llamo"}]}


@router.post("/v1/chat/completions")
async def chat_completions(request: ChatCompletionRequest, gateway: GatewayDependency):
    check_chat_request(request, gateway.served_model_name)
    # in a worker thread, so requests overlap
    body = await asyncio.to_thread(build_engine_request, gateway.client, request)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if request.stream:
        events = ChunkEvents(completion_id, created, gateway.served_model_name)
        return StreamingResponse(stream_chunks(gateway, body, events), media_type="text/event-stream")
    completion = await gateway.complete(body)
    return chat_completion(completion, completion_id, created, gateway.served_model_name)


async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
    return error_response(400, f"invalid request body: {error.errors()}")


async def refused(request: Request, error: APIError) -> JSONResponse:
    return error_response(error.status, error.message, error.kind)


def create_app(
    frontend: LlamoFrontEnd | str | pathlib.Path,
    vllm_url: str,
    served_model_name: str = "llamo",
    max_connections: int = 256,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The gateway app for a front-end (object or `frontend/` folder) and a vLLM server URL (`transport`: an httpx
    transport for the engine connection, e.g. to record what would reach it)."""
    client = LlamoVLLMClient(frontend, base_url=vllm_url, model=served_model_name)
    app = FastAPI(title="LLaMo gateway", lifespan=lifespan)
    app.state.gateway = Gateway(client, served_model_name, max_connections=max_connections, transport=transport)
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_exception_handler(APIError, refused)
    app.include_router(router)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible gateway for LLaMo in front of a private vLLM server.")
    parser.add_argument("--export_dir", type=pathlib.Path, required=True, help="folder written by llamo-export-vllm")
    parser.add_argument("--vllm_url", default="http://127.0.0.1:8000")
    parser.add_argument("--host", default="0.0.0.0", help="the gateway is the public face (the vLLM server is not)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    import uvicorn

    manifest = json.loads((args.export_dir / "serving.json").read_text())
    app = create_app(args.export_dir / "frontend", args.vllm_url, served_model_name=manifest["served_model_name"])
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
