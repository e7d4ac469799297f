"""`pipeline("molecule-text-to-text", model=..., trust_remote_code=True)`: LLaMo's chat messages in, answers out.

Saved next to the weights (modeling_llamo.py imports it) and named in the config's `custom_pipelines`, so the task
loads from any LLaMo folder or Hub repository:

    from transformers import pipeline

    pipe = pipeline("molecule-text-to-text", model="path/to/llamo", trust_remote_code=True)
    messages = [{"role": "user", "content": [
        {"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"},
        {"type": "text", "text": "Describe this molecule."}]}]
    pipe(messages, max_new_tokens=64)[0]["generated_text"][-1]["content"]   # the answer
    pipe({"smiles": "CCO", "text": "Describe this molecule."})[0]["generated_text"]  # a single question

`text-generation` renders molecule items with the tokenizer alone, which cannot featurize them: LLaMo's chat
template refuses them there with a message naming this task.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils.chat_template_utils import Chat


PIPELINE_TASK = "molecule-text-to-text"


class LlamoPipeline(Pipeline):
    """Answers questions about molecules with a LLaMo model and its processor.

    Inputs, one or a list of them:
        - a chat: a list of `{"role", "content"}` messages whose content items are `{"type": "text", "text": ...}`
          or `{"type": "molecule", "smiles": ...}` (a SMILES string or an RDKit `Mol`); the model continues it.
        - a question: `{"smiles": str | list[str], "text": str}`; the molecules go first in the user turn.

    Returns per input a list with one dict: `generated_text` is the chat with the answer appended as an assistant
    turn (chat input) or the answer (question input). Keyword arguments are generation options (`max_new_tokens`,
    `do_sample`, `num_beams`, ...), or `generate_kwargs={...}`.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(f"the {PIPELINE_TASK} pipeline needs LLaMo's processor (AutoProcessor with trust_remote_code=True)")
        if self._batch_size not in (None, 1):
            raise ValueError(
                "LlamoPipeline answers one input at a time (batch_size=1); for batched generation call "
                "processor.apply_chat_template(chats, padding=True, ...) and model.generate yourself"
            )

    def _sanitize_parameters(self, generate_kwargs: dict | None = None, batch_size: int | None = None, **generation: Any):
        if batch_size not in (None, 1):
            raise ValueError("LlamoPipeline answers one input at a time: pass a list of inputs with batch_size=1")
        return {}, {"generate_kwargs": {**(generate_kwargs or {}), **generation}}, {}

    def preprocess(self, inputs) -> dict:
        if isinstance(inputs, Chat):
            messages, is_chat = list(inputs.messages), True
        elif isinstance(inputs, dict) and "smiles" in inputs:
            smiles = inputs["smiles"] if isinstance(inputs["smiles"], (list, tuple)) else [inputs["smiles"]]
            content = [{"type": "molecule", "smiles": molecule} for molecule in smiles]
            content.append({"type": "text", "text": inputs.get("text", "")})
            messages, is_chat = [{"role": "user", "content": content}], False
        else:
            raise ValueError(
                "LlamoPipeline takes chat messages (a list of {'role', 'content'} dicts with molecule items) or "
                f"{{'smiles': ..., 'text': ...}}, got {type(inputs).__name__}"
            )
        model_inputs = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        return {"model_inputs": model_inputs, "messages": messages, "is_chat": is_chat}

    def _forward(self, inputs: dict, generate_kwargs: dict | None = None) -> dict:
        model_inputs = inputs["model_inputs"]
        generated = self.model.generate(**model_inputs, **(generate_kwargs or {}))
        return {**inputs, "answer_ids": generated[:, model_inputs["input_ids"].shape[1] :]}

    def postprocess(self, outputs: dict) -> list[dict]:
        results = []
        for ids in outputs["answer_ids"]:
            answer = self.processor.decode(ids, skip_special_tokens=True).strip()
            if outputs["is_chat"]:
                results.append({"generated_text": [*outputs["messages"], {"role": "assistant", "content": answer}]})
            else:
                results.append({"generated_text": answer})
        return results


def register_pipeline() -> None:
    """Register the task once per process. Every LLaMo folder loaded with `trust_remote_code=True` imports its own
    copy of this module (and the repository's copy may be imported too); registering each would replace the task
    with a warning every time. The first LLaMo registration stays: `pipeline(task, model=folder)` takes the class
    named in the folder's own config (`custom_pipelines`) either way. A task of the same name registered by anything
    other than a LlamoPipeline is replaced, with transformers' warning."""
    try:
        _, registered, _ = PIPELINE_REGISTRY.check_task(PIPELINE_TASK)
    except KeyError:
        registered = None
    if registered is None or getattr(registered["impl"], "__name__", None) != LlamoPipeline.__name__:
        PIPELINE_REGISTRY.register_pipeline(
            PIPELINE_TASK, pipeline_class=LlamoPipeline, pt_model=AutoModelForCausalLM, type="multimodal"
        )
    else:  # what `Pipeline.save_pretrained` reads to write `custom_pipelines`, for this copy of the class
        LlamoPipeline._registered_impl = {PIPELINE_TASK: {**registered, "impl": LlamoPipeline}}


register_pipeline()

__all__ = ["LlamoPipeline", "PIPELINE_TASK"]
