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
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict

from .client import SAMPLING_FIELDS, LlamoVLLMClient
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


def error_response(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}})


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
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        state["http"] = httpx.AsyncClient(timeout=client.timeout, limits=limits, transport=transport)
        yield
        await state["http"].aclose()

    app = FastAPI(title="LLaMo gateway", lifespan=lifespan)
    app.state.client = client

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(400, f"invalid request body: {error.errors()}")

    @app.get("/health")
    async def health() -> JSONResponse:
        try:
            upstream = await state["http"].get(f"{client.base_url}/health", timeout=5.0)
            ready = upstream.status_code == 200
        except httpx.HTTPError:
            ready = False
        return JSONResponse(
            status_code=200 if ready else 503, content={"gateway": "ok", "engine": "ok" if ready else "unavailable"}
        )

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": served_model_name, "object": "model", "owned_by": "llamo"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        if request.n != 1:
            return error_response(400, "n must be 1: send one request per sample")
        if request.model not in (None, served_model_name):
            return error_response(
                404, f"model {request.model!r} is not served here; this gateway serves {served_model_name!r}", "not_found_error"
            )
        try:  # rendering, RDKit and the projector: in a worker thread, so requests overlap
            body = await asyncio.to_thread(client.build_request, request.messages, request.stream, **request.sampling())
        except (ValueError, TypeError, KeyError, TemplateError) as error:  # the processor's or the chat template's message
            return error_response(400, str(error))
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            return StreamingResponse(stream_chunks(body, completion_id, created), media_type="text/event-stream")
        try:
            payload = await client.post_completion(body, state["http"])
        except httpx.HTTPStatusError as error:
            return error_response(error.response.status_code, str(error), "engine_error")
        except httpx.HTTPError as error:
            return error_response(502, f"the vLLM server did not answer: {error!r}", "engine_unavailable")
        completion = client.parse_completion(payload)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": served_model_name,
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

    async def stream_chunks(body: dict, completion_id: str, created: int):
        """vLLM's completion chunks as OpenAI chat-completion chunks (server-sent events)."""

        def event(delta: dict, finish_reason: str | None = None, usage: dict | None = None) -> str:
            chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": served_model_name}
            chunk["choices"] = [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
            if usage is not None:
                chunk["usage"] = usage
            return f"data: {json.dumps(chunk)}\n\n"

        yield event({"role": "assistant", "content": ""})
        emitted, token_ids = "", []
        try:
            async for chunk in client.stream_completion(body, state["http"]):
                for choice in chunk.get("choices") or []:
                    text = choice.get("text") or ""
                    token_ids += choice.get("token_ids") or []
                    if choice.get("finish_reason"):  # complete the text as the non-streamed answer is completed
                        final = client.answer_text({**choice, "text": emitted + text}, token_ids)
                        text = final[len(emitted) :] if final.startswith(emitted) else text
                    emitted += text
                    if text or choice.get("finish_reason"):
                        yield event({"content": text} if text else {}, choice.get("finish_reason"))
                if chunk.get("usage"):
                    yield event({}, usage=chunk["usage"])
        except httpx.HTTPError as error:  # headers are sent: report in the stream, as OpenAI does
            yield f"data: {json.dumps({'error': {'message': str(error), 'type': 'engine_error'}})}\n\n"
        yield "data: [DONE]\n\n"

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
