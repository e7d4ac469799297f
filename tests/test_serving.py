"""Serving on stock vLLM through prompt embeddings: export, front-end, gateway, and the end-to-end equivalence.

The first tests need only this environment. The end-to-end tests start a real vLLM server (CPU build, its own venv
from scripts/install_vllm.sh) on 127.0.0.1 and the gateway in front of it; they skip when that venv is missing,
except under .ci/run, which installs it and sets LLAMO_SERVING_TESTS=1 to turn the skip into a failure.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import threading
import time

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from configuration_llamo import LlamoConfig
from llamo.builder import CHATML_TRAINING_TEMPLATE
from llamo.cli import load_model_and_processor
from llamo.serving.engine import VLLMServer, free_port, vllm_python
from llamo.serving.export import check_servable, export_for_vllm, extract_language_model, verify_export
from llamo.serving.frontend import LlamoFrontEnd
from llamo.serving.gateway import create_app
from llamo.serving.tiny import build_servable_tiny_llamo

from common import serving_conversations  # benchmarks/ is on sys.path (conftest.py)


MAX_NEW_TOKENS = 24
SERVING_REQUIRED = os.environ.get("LLAMO_SERVING_TESTS") == "1"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny LLaMo with head_dim 32 and its export."""
    model, processor = build_servable_tiny_llamo(seed=3)
    export_dir = tmp_path_factory.mktemp("served")
    export_for_vllm(model, processor, export_dir)
    return model, processor, export_dir


def render(processor, messages):
    return processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


def generate_ids(model, processor, messages) -> list[int]:
    """`model.generate` greedy answer ids, up to and including EOS."""
    inputs = render(processor, messages)
    output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    return output[: output.index(eos) + 1] if eos in output else output


# --- export and front-end (no vLLM needed) ---


def test_export_is_a_plain_causal_lm_that_reproduces_llamo_logits_from_frontend_embeddings(served):
    model, processor, export_dir = served
    causal = AutoModelForCausalLM.from_pretrained(export_dir / "language_model")  # no remote code
    frontend = LlamoFrontEnd.from_pretrained(export_dir / "frontend")
    assert type(causal) is LlamaForCausalLM and causal.config.head_dim == 32
    assert not (export_dir / "language_model" / "modeling_llamo.py").exists()
    for messages in serving_conversations(5):  # one molecule, two molecules, multi-turn
        inputs = render(processor, messages)
        with torch.inference_mode():
            expected = model(**inputs).logits
            got = causal(inputs_embeds=frontend.embed_inputs(inputs)).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert json.loads((export_dir / "serving.json").read_text())["dtype"] == "float32"


def assert_export_answers_like_generate(model, processor, export_dir, conversations) -> None:
    """The exported plain LM, fed the saved front-end's prompt embeddings, gives `model.generate`'s greedy answers."""
    causal = AutoModelForCausalLM.from_pretrained(export_dir / "language_model")
    frontend = LlamoFrontEnd.from_pretrained(export_dir / "frontend")
    for messages in conversations:
        prompt = frontend.prompt_embeddings(messages)
        assert prompt.input_ids == render(processor, messages)["input_ids"][0].tolist()
        output = causal.generate(
            inputs_embeds=prompt.embeddings[None], attention_mask=torch.ones(1, len(prompt.input_ids), dtype=torch.long),
            max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
        )[0].tolist()  # fmt: skip
        expected = generate_ids(model, processor, messages)
        assert output[: len(expected)] == expected


def test_frontend_embeddings_into_the_exported_lm_give_generates_greedy_answers(served):
    model, processor, export_dir = served
    assert_export_answers_like_generate(model, processor, export_dir, serving_conversations(4))


CHATML_LAYOUT = "<|im_start|>system\nYou are a chemist.<|im_end|>\n<|im_start|>user\nName ethanol's formula.<|im_end|>\n"
LLAMA2_LAYOUT = (
    "<s>[INST] <<SYS>>\nYou are a chemist.\n<</SYS>>\n\nName ethanol's formula. [/INST] C2H6O</s><s>[INST] Thanks. [/INST]"
)


@pytest.mark.parametrize("layout", ["llama2 (LLaMo default)", "chatml (SmolLM2, Qwen)"])
def test_exported_chat_template_is_the_processors_and_reads_openai_content_parts_like_it(layout, tmp_path):
    model, processor = build_servable_tiny_llamo(seed=3)
    if layout.startswith("chatml"):
        processor.chat_template = CHATML_TRAINING_TEMPLATE.replace("{{ DEFAULT_SYSTEM }}", "")
    export_dir = export_for_vllm(model, processor, tmp_path / "served")
    tokenizer = AutoTokenizer.from_pretrained(export_dir / "language_model")
    assert tokenizer.chat_template == processor.chat_template  # one layout on both sides of the engine
    parts = [
        {"role": "system", "content": [{"type": "text", "text": "You are a chemist."}]},
        {"role": "user", "content": [{"type": "text", "text": "Name"}, {"type": "text", "text": "ethanol's formula."}]},
        {"role": "assistant", "content": "C2H6O"},
        {"role": "user", "content": "Thanks."},
    ]
    strings = [
        {**message, "content": message["content"] if isinstance(message["content"], str) else " ".join(p["text"] for p in message["content"])}
        for message in parts
    ]  # fmt: skip
    rendered = tokenizer.apply_chat_template(parts, tokenize=False, add_generation_prompt=True)
    assert rendered == processor.apply_chat_template(strings, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(CHATML_LAYOUT if layout.startswith("chatml") else LLAMA2_LAYOUT)


@pytest.mark.parametrize(
    "text_config, message",
    [
        ({"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 64}, "scales its input embeddings"),
        ({"model_type": "granite", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
          "vocab_size": 64, "logits_scaling": 8.0}, "logits_scaling=8.0"),
    ],
)  # fmt: skip
def test_export_refuses_families_whose_embedding_or_logit_transform_vllm_would_not_reproduce(text_config, message):
    config = LlamoConfig(text_config=text_config, gnn_num_layers=1, gnn_hidden_size=8, projector_num_heads=2, graph_token_id=1)
    with pytest.raises(ValueError, match=message):
        check_servable(config)


def test_export_and_frontend_refuse_a_text_only_model_and_name_the_language_model_instead():
    text_config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "vocab_size": 64}  # fmt: skip
    config = LlamoConfig(text_config=text_config, projector_type="none", graph_token_id=1)
    with pytest.raises(ValueError, match="serve its language model folder directly"):
        check_servable(config)
    with pytest.raises(ValueError, match="serve its language model directly"):
        LlamoFrontEnd(config, processor=None, embed_tokens=None)


def test_export_self_check_fails_when_the_exported_head_differs(served):
    model, processor, _ = served
    frontend = LlamoFrontEnd.from_llamo(model, processor)
    causal = extract_language_model(model)
    assert verify_export(model, frontend, causal) <= 1e-5
    with torch.no_grad():
        causal.lm_head.weight[5] += 1.0  # what a family-specific head transform looks like from outside
    with pytest.raises(ValueError, match="does not reproduce LLaMo's logits"):
        verify_export(model, frontend, causal)


def test_export_of_a_lora_adapter_folder_merges_it(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, processor = build_servable_tiny_llamo(seed=5)
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    model.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, trust_remote_code=True)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, task_type="CAUSAL_LM", target_modules=r"^model\.language_model\..*\.(q_proj|v_proj)$")
    )
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)  # a trained-looking adapter that changes the logits
    peft_model.save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)
    merged, merged_processor = load_model_and_processor(adapter_dir, device="cpu")
    inputs = render(processor, serving_conversations(1)[0])
    with torch.inference_mode():
        adapted, plain = peft_model.eval()(**inputs).logits, model(**inputs).logits
        export_dir = export_for_vllm(merged, merged_processor, tmp_path / "served")
        causal = AutoModelForCausalLM.from_pretrained(export_dir / "language_model")
        exported = causal(inputs_embeds=LlamoFrontEnd.from_pretrained(export_dir / "frontend").embed_inputs(inputs)).logits
    assert not torch.allclose(adapted, plain, atol=1e-3)
    torch.testing.assert_close(exported, adapted, rtol=0, atol=1e-4)


# --- gateway contract with a recording transport in place of the engine ---


class RecordingEngine(httpx.AsyncBaseTransport):
    """Records the requests that reach "vLLM" and answers with a fixed completion."""

    def __init__(self):
        self.requests: list[dict] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(json.loads(await request.aread()))
        body = {
            "choices": [{"text": "?", "finish_reason": "stop", "token_ids": [7, 2]}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2},
        }
        return httpx.Response(200, json=body)


def test_gateway_answers_400_with_the_processors_message_and_sends_nothing_for_an_invalid_smiles(served):
    model, processor, _ = served
    engine = RecordingEngine()
    with TestClient(create_app(LlamoFrontEnd.from_llamo(model, processor), "http://engine", transport=engine)) as gateway:
        bad = [{"role": "user", "content": [{"type": "molecule", "smiles": "C1CC("}, {"type": "text", "text": "Describe it."}]}]
        response = gateway.post("/v1/chat/completions", json={"messages": bad, "max_tokens": 4})
        with pytest.raises(ValueError) as processor_error:
            render(processor, bad)
        assert response.status_code == 400
        assert response.json()["error"]["message"] == str(processor_error.value)
        unknown_item = [{"role": "user", "content": [{"type": "image", "url": "x"}]}]
        assert gateway.post("/v1/chat/completions", json={"messages": unknown_item}).status_code == 400
        assert gateway.post("/v1/chat/completions", json={"messages": "not a list"}).status_code == 400
        tool_turn = [{"role": "tool", "content": "42"}]  # the chat template raises for roles LLaMo does not have
        response = gateway.post("/v1/chat/completions", json={"messages": tool_turn})
        assert response.status_code == 400 and "system, user and assistant turns" in response.json()["error"]["message"]
        assert engine.requests == []


def test_gateway_sends_the_engine_only_its_own_body_with_the_frontends_embeddings(served):
    model, processor, _ = served
    engine = RecordingEngine()
    frontend = LlamoFrontEnd.from_llamo(model, processor)
    messages = serving_conversations(2)[1]
    with TestClient(create_app(frontend, "http://engine", transport=engine)) as gateway:
        # a caller trying to smuggle raw embeddings or a text prompt to the engine
        request = {"messages": messages, "max_tokens": 4, "temperature": 0, "prompt_embeds": "AAAA", "prompt": "hi"}
        response = gateway.post("/v1/chat/completions", json=request)
    assert response.status_code == 200
    # the answer text is the processor's decoding of the engine's ids, as after generate
    assert response.json()["choices"][0]["message"] == {
        "role": "assistant",
        "content": processor.decode([7, 2], skip_special_tokens=True),
    }
    (sent,) = engine.requests
    assert set(sent) == {"model", "prompt_embeds", "stream", "return_token_ids", "max_tokens", "temperature"}
    tensor = torch.load(io.BytesIO(base64.b64decode(sent["prompt_embeds"])), weights_only=True)
    assert tensor.dtype == torch.float32
    assert torch.equal(tensor, frontend.prompt_embeddings(messages).embeddings)


class ScriptedEngine(httpx.AsyncBaseTransport):
    """Answers each request with `respond(request)` (an `httpx.Response`, or an exception to raise) and records
    (method, path, JSON body or None)."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[tuple[str, str, dict | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        self.requests.append((request.method, request.url.path, json.loads(content) if content else None))
        answer = self.respond(request)
        if isinstance(answer, Exception):
            raise answer
        return answer


def sse(*events) -> bytes:
    return "".join(f"data: {json.dumps(event) if isinstance(event, dict) else event}\n\n" for event in events).encode()


def test_gateway_routes_status_codes_and_error_bodies(served):
    model, processor, _ = served
    frontend = LlamoFrontEnd.from_llamo(model, processor)
    messages = serving_conversations(1)[0]
    completion = {
        "choices": [{"text": "?", "finish_reason": "stop", "token_ids": [7, 2]}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2},
    }
    engine = ScriptedEngine(lambda request: httpx.Response(200, json={} if request.method == "GET" else completion))
    with TestClient(create_app(frontend, "http://engine/", served_model_name="tiny", transport=engine)) as gateway:
        assert gateway.get("/v1/models").json() == {
            "object": "list",
            "data": [{"id": "tiny", "object": "model", "owned_by": "llamo"}],
        }
        health = gateway.get("/health")
        assert (health.status_code, health.json()) == (200, {"gateway": "ok", "engine": "ok"})
        assert engine.requests[-1] == ("GET", "/health", None)

        response = gateway.post("/v1/chat/completions", json={"messages": messages, "n": 2})
        assert (response.status_code, response.json()) == (
            400,
            {"error": {"message": "n must be 1: send one request per sample", "type": "invalid_request_error", "code": 400}},
        )
        response = gateway.post("/v1/chat/completions", json={"messages": messages, "model": "llamo"})
        assert (response.status_code, response.json()) == (
            404,
            {
                "error": {
                    "message": "model 'llamo' is not served here; this gateway serves 'tiny'",
                    "type": "not_found_error",
                    "code": 404,
                }
            },
        )
        response = gateway.post("/v1/chat/completions", json={"model": "tiny"})  # no messages
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
        assert response.json()["error"]["message"].startswith("invalid request body: ")
        assert [method for method, _, _ in engine.requests] == ["GET"]  # none of these reached the engine

        request = {"messages": messages, "model": "tiny", "max_completion_tokens": 3, "top_k": 5, "user": "someone"}
        response = gateway.post("/v1/chat/completions", json=request)
        assert response.status_code == 200
        answer = response.json()
        assert answer["id"].startswith("chatcmpl-") and isinstance(answer["created"], int)
        assert {key: answer[key] for key in ("object", "model", "choices", "usage")} == {
            "object": "chat.completion",
            "model": "tiny",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": processor.decode([7, 2], skip_special_tokens=True)},
                    "finish_reason": "stop",
                    "token_ids": [7, 2],
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        }
        method, path, sent = engine.requests[-1]
        assert (method, path) == ("POST", "/v1/completions")
        assert {key: value for key, value in sent.items() if key != "prompt_embeds"} == {
            "model": "tiny",
            "stream": False,
            "max_tokens": 3,
            "top_k": 5,
            "return_token_ids": True,
        }

    def engine_error(request):
        if request.method == "GET":
            return httpx.ConnectError("refused")
        return httpx.Response(503, json={"error": {"message": "overloaded"}})

    with TestClient(create_app(frontend, "http://engine", transport=ScriptedEngine(engine_error))) as gateway:
        health = gateway.get("/health")
        assert (health.status_code, health.json()) == (503, {"gateway": "ok", "engine": "unavailable"})
        response = gateway.post("/v1/chat/completions", json={"messages": messages})
        assert (response.status_code, response.json()["error"]) == (
            503,
            {"message": "vLLM answered 503: overloaded", "type": "engine_error", "code": 503},
        )
    unreachable = ScriptedEngine(lambda request: httpx.ConnectError("refused"))
    with TestClient(create_app(frontend, "http://engine", transport=unreachable)) as gateway:
        response = gateway.post("/v1/chat/completions", json={"messages": messages})
        assert response.status_code == 502
        assert response.json()["error"] == {
            "message": "the vLLM server did not answer: ConnectError('refused')",
            "type": "engine_unavailable",
            "code": 502,
        }


def test_gateway_streams_openai_chunks_and_completes_the_last_piece_from_the_ids(served):
    model, processor, _ = served
    frontend = LlamoFrontEnd.from_llamo(model, processor)
    messages = serving_conversations(1)[0]
    ids = processor.tokenizer("Describe ethanol", add_special_tokens=False)["input_ids"]
    usage = {"prompt_tokens": 9, "completion_tokens": len(ids)}
    engine_chunks = sse(
        {"choices": [{"text": "Describe", "token_ids": ids[:1], "finish_reason": None}]},
        {"choices": [{"text": "", "token_ids": [], "finish_reason": None}]},  # nothing to pass on
        # the engine held back the bytes of an unfinished character: the ids complete the text
        {"choices": [{"text": " eth", "token_ids": ids[1:], "finish_reason": "length"}]},
        {"choices": [], "usage": usage},
        "[DONE]",
    )
    engine = ScriptedEngine(lambda request: httpx.Response(200, content=engine_chunks))
    with TestClient(create_app(frontend, "http://engine", transport=engine)) as gateway:
        response = gateway.post("/v1/chat/completions", json={"messages": messages, "stream": True, "max_tokens": 4})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert processor.decode(ids, skip_special_tokens=True) == "Describe ethanol"
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event[len("data: ") :]) for event in events[:-2]]
    assert len({(chunk["id"], chunk["created"]) for chunk in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["model"] == "llamo" for chunk in chunks)
    assert [{key: chunk[key] for key in chunk if key in ("choices", "usage")} for chunk in chunks] == [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Describe"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": " ethanol"}, "finish_reason": "length"}]},
        {"choices": [], "usage": usage},
    ]
    ((method, path, sent),) = engine.requests
    assert (method, path, sent["stream"], sent["stream_options"]) == ("POST", "/v1/completions", True, {"include_usage": True})

    failing = ScriptedEngine(lambda request: httpx.Response(500, json={"error": {"message": "boom"}}))
    with TestClient(create_app(frontend, "http://engine", transport=failing)) as gateway:
        response = gateway.post("/v1/chat/completions", json={"messages": messages, "stream": True})
    assert response.status_code == 200  # headers were sent before the engine answered: the error is in the stream
    events = response.text.split("\n\n")
    assert events[1:] == [
        'data: {"error": {"message": "vLLM answered 500: boom", "type": "engine_error"}}',
        "data: [DONE]",
        "",
    ]
    assert json.loads(events[0][len("data: ") :])["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_answer_text_decodes_the_ids_unless_a_stop_string_cut_the_answer(served):
    from llamo.serving.client import LlamoVLLMClient

    model, processor, _ = served
    client = LlamoVLLMClient(LlamoFrontEnd.from_llamo(model, processor))
    ids = processor.tokenizer("Describe ethanol", add_special_tokens=False)["input_ids"]
    # vLLM held back the bytes of an unfinished character: the ids still hold them
    assert client.answer_text({"text": "Describe eth", "stop_reason": None}, ids) == "Describe ethanol"
    assert client.answer_text({"text": "Describe", "stop_reason": " eth"}, ids) == "Describe"


# --- end to end on a real vLLM server ---


@pytest.fixture(scope="module")
def vllm_server(served, tmp_path_factory):
    if not vllm_python().exists():
        reason = f"no vLLM environment at {vllm_python().parent.parent} (bash scripts/install_vllm.sh)"
        if SERVING_REQUIRED:
            pytest.fail(reason + "; LLAMO_SERVING_TESTS=1 requires it")
        pytest.skip(reason + "; .ci/run installs it and sets LLAMO_SERVING_TESTS=1, which turns this skip into a failure")
    _, _, export_dir = served
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with VLLMServer(export_dir, log_path=log, max_model_len=512) as server:
        yield server


@pytest.fixture(scope="module")
def gateway_url(served, vllm_server):
    import uvicorn

    _, _, export_dir = served
    app = create_app(export_dir / "frontend", vllm_server.url)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_vllm_server_listens_on_loopback_only(vllm_server):
    command = vllm_server.command
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--enable-prompt-embeds" in command


def test_gateway_over_vllm_gives_generates_greedy_answers_for_32_prompts(served, gateway_url):
    model, processor, _ = served
    conversations = serving_conversations(32)
    assert (
        sum(
            len([i for m in c for i in (m["content"] if isinstance(m["content"], list) else []) if i["type"] == "molecule"]) == 2
            for c in conversations
        )
        >= 10
    )

    async def ask_all():
        async with httpx.AsyncClient(timeout=600) as http:
            requests = [
                http.post(
                    f"{gateway_url}/v1/chat/completions", json={"messages": c, "max_tokens": MAX_NEW_TOKENS, "temperature": 0}
                )
                for c in conversations
            ]
            return await asyncio.gather(*requests)

    responses = asyncio.run(ask_all())
    assert [r.status_code for r in responses] == [200] * 32
    expected = [generate_ids(model, processor, c) for c in conversations]
    got = [r.json()["choices"][0]["token_ids"] for r in responses]
    matches = sum(g == e for g, e in zip(got, expected))
    assert matches == 32, f"{matches}/32 identical; first difference: {next((g, e) for g, e in zip(got, expected) if g != e)}"
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == [
        processor.decode(ids, skip_special_tokens=True) for ids in expected
    ]
    assert len({tuple(ids) for ids in expected}) >= 8  # the prompts really steer the answers


def test_gateway_streams_the_same_answer(served, gateway_url):
    model, processor, _ = served
    messages = serving_conversations(3)[2]
    body = {"messages": messages, "max_tokens": MAX_NEW_TOKENS, "temperature": 0, "stream": True}
    pieces, finish = [], None
    with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[len("data: ") :])
                for choice in chunk["choices"]:
                    pieces.append(choice["delta"].get("content", ""))
                    finish = choice["finish_reason"] or finish
    assert "".join(pieces) == processor.decode(generate_ids(model, processor, messages), skip_special_tokens=True)
    assert finish in ("stop", "length")


def test_gateway_over_vllm_rejects_an_invalid_smiles_with_400(gateway_url):
    bad = [{"role": "user", "content": [{"type": "molecule", "smiles": "c1cccc1"}, {"type": "text", "text": "Describe it."}]}]
    response = httpx.post(f"{gateway_url}/v1/chat/completions", json={"messages": bad}, timeout=60)
    assert response.status_code == 400
    assert "molecule 0" in response.json()["error"]["message"]


# --- the real LLaMo-SmolLM2 (the shipped weights around the registry's SmolLM2) ---


@pytest.fixture(scope="module")
def served_smollm2(smollm2_folder, tmp_path_factory):
    from llamo.release import DEFAULT_RELEASE, RELEASE_FILE, assemble_release

    if not (DEFAULT_RELEASE / RELEASE_FILE).is_file():
        pytest.skip(f"needs the shipped weights {DEFAULT_RELEASE / RELEASE_FILE}")
    model, processor = assemble_release(DEFAULT_RELEASE, output_dir=None, llm=smollm2_folder)
    export_dir = export_for_vllm(model.float().eval(), processor, tmp_path_factory.mktemp("served-smollm2"))
    return model, processor, export_dir


def test_the_real_llamo_smollm2_exports_as_a_plain_chatml_llama_with_generates_answers(served_smollm2):
    model, processor, export_dir = served_smollm2
    causal = AutoModelForCausalLM.from_pretrained(export_dir / "language_model")
    tokenizer = AutoTokenizer.from_pretrained(export_dir / "language_model")
    assert type(causal) is LlamaForCausalLM and causal.config.num_hidden_layers == 30 and causal.config.tie_word_embeddings
    assert tokenizer.chat_template == processor.chat_template and "<|im_start|>" in tokenizer.chat_template
    # one molecule, two molecules, multi-turn
    assert_export_answers_like_generate(model, processor, export_dir, serving_conversations(3))


def test_vllm_serves_the_real_llamo_smollm2_with_generates_greedy_answers(served_smollm2, tmp_path):
    from llamo.serving.client import LlamoVLLMClient

    if not vllm_python().exists():
        if SERVING_REQUIRED:
            pytest.fail(f"no vLLM environment at {vllm_python().parent.parent}; LLAMO_SERVING_TESTS=1 requires it")
        pytest.skip(f"no vLLM environment at {vllm_python().parent.parent} (bash scripts/install_vllm.sh)")
    model, processor, export_dir = served_smollm2
    conversations = serving_conversations(8)
    with VLLMServer(export_dir, log_path=tmp_path / "server.log", max_model_len=1024) as server:
        client = LlamoVLLMClient(export_dir / "frontend", base_url=server.url)
        answers = client.complete_batch(conversations, concurrency=8, max_tokens=MAX_NEW_TOKENS, temperature=0)
    expected = [generate_ids(model, processor, c) for c in conversations]
    got = [answer.token_ids for answer in answers]
    same = sum(g == e for g, e in zip(got, expected))
    assert same == len(conversations), f"{same}/{len(conversations)} identical: {list(zip(got, expected))}"
    assert [answer.text for answer in answers] == [processor.decode(ids, skip_special_tokens=True) for ids in expected]
