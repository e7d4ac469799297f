"""LLaMo's graph side as a serving front-end: molecules in, prompt embeddings out.

The language model is served elsewhere (vLLM, from the plain causal-LM folder that `llamo.serving.export` writes).
Everything molecule-specific stays here: the processor (tokenizer, chat template, RDKit featurization), the GIN, the
projector and the language model's input-embedding table. For a conversation it returns the exact sequence of input
embeddings `LlamoModel.forward` would feed the language model: token embeddings with the graph vectors scattered
into the `<graph>` slots.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from configuration_llamo import LlamoConfig
from modeling_llamo import LlamoForConditionalGeneration, LlamoGraphEncoder
from processing_llamo import LlamoProcessor
from projectors_llamo import build_projector


FRONTEND_WEIGHTS = "frontend.safetensors"
FRONTEND_CONFIG = "frontend_config.json"


@dataclass
class PromptEmbeddings:
    """One rendered prompt: its token ids (graph slots included) and the input embeddings `[seq, hidden]`."""

    input_ids: list[int]
    embeddings: torch.Tensor


class LlamoFrontEnd(nn.Module):
    """Processor + graph encoder + projector + input-embedding table of a LLaMo model (no transformer layers)."""

    def __init__(self, config: LlamoConfig, processor: LlamoProcessor, embed_tokens: nn.Embedding):
        super().__init__()
        if not config.uses_graph:
            raise ValueError("this LLaMo model has projector_type='none' (text only): serve its language model directly")
        self.config = config
        self.processor = processor
        self.graph_encoder = LlamoGraphEncoder(config)
        self.projector = build_projector(config)
        self.embed_tokens = embed_tokens
        self.eval()  # BatchNorm uses its running statistics, as in generate

    @classmethod
    def from_llamo(cls, model: LlamoForConditionalGeneration, processor: LlamoProcessor) -> LlamoFrontEnd:
        """Share the modules of an in-memory LLaMo model (no copy)."""
        frontend = cls.__new__(cls)
        nn.Module.__init__(frontend)
        if model.model.projector is None:
            raise ValueError("this LLaMo model has projector_type='none' (text only): serve its language model directly")
        frontend.config = model.config
        frontend.processor = processor
        frontend.graph_encoder = model.model.graph_encoder
        frontend.projector = model.model.projector
        frontend.embed_tokens = model.get_input_embeddings()
        if type(frontend.embed_tokens) is not nn.Embedding:
            # e.g. Gemma 3's scaled embedding: vLLM does not apply the scale to prompt embeddings
            raise ValueError(
                f"the language model's input embeddings are a {type(frontend.embed_tokens).__name__}, not a plain "
                "nn.Embedding: its prompt embeddings could not be reproduced for vLLM"
            )
        return frontend

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def save_pretrained(self, directory: str | pathlib.Path) -> None:
        """Config, processor and the front-end weights (graph encoder, projector, embedding table) in their dtypes."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for prefix in ("graph_encoder", "projector", "embed_tokens"):
            for name, tensor in getattr(self, prefix).state_dict().items():
                tensors[f"{prefix}.{name}"] = tensor.detach().contiguous()
        save_file(tensors, directory / FRONTEND_WEIGHTS, metadata={"format": "pt"})
        self.config.save_pretrained(directory)
        self.processor.save_pretrained(directory)
        (directory / FRONTEND_CONFIG).write_text(
            json.dumps({"vocab_size": self.embed_tokens.num_embeddings, "hidden_size": self.embed_tokens.embedding_dim}, indent=2)
        )

    @classmethod
    def from_pretrained(cls, directory: str | pathlib.Path) -> LlamoFrontEnd:
        """Load what `save_pretrained` wrote. Parameters keep their saved dtypes (e.g. a bf16 projector with an
        fp32 GIN and LayerNorm), as `from_pretrained` gives them to the full model."""
        directory = pathlib.Path(directory)
        config = LlamoConfig.from_pretrained(directory)
        processor = LlamoProcessor.from_pretrained(directory, trust_remote_code=True)  # its tokenizer reads config.json
        sizes = json.loads((directory / FRONTEND_CONFIG).read_text())
        frontend = cls(config, processor, nn.Embedding(sizes["vocab_size"], sizes["hidden_size"]))
        state = load_file(directory / FRONTEND_WEIGHTS)
        frontend.load_state_dict(state, strict=True, assign=True)
        return frontend.eval()

    def render(self, messages: list[dict], add_generation_prompt: bool = True):
        """Tokenize one conversation in LLaMo's format (`{"type": "molecule", "smiles": ...}` items). Raises
        `ValueError` with the processor's message for an invalid SMILES or a malformed message."""
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True, return_tensors="pt"
        )

    @torch.inference_mode()
    def embed_inputs(self, inputs) -> torch.Tensor:
        """Input embeddings `[batch, seq, hidden]` of processor outputs, exactly as `LlamoModel.forward` builds them."""
        input_ids = inputs["input_ids"]
        embeddings = self.embed_tokens(input_ids)
        if inputs.get("graph_node_features") is None:
            return embeddings
        node_batch = inputs["graph_node_batch"]
        num_molecules = int(node_batch[-1]) + 1 if node_batch.numel() else 0
        levels = self.graph_encoder(inputs["graph_node_features"], inputs["graph_edge_index"], inputs["graph_edge_features"])
        graph = self.projector(
            levels, node_batch, num_molecules, inputs.get("graph_motif_features"), inputs.get("graph_motif_batch")
        )
        graph_features = graph.graph_features.to(embeddings.device, embeddings.dtype)
        slot_mask = (input_ids == self.config.graph_token_id).unsqueeze(-1)
        if int(slot_mask.sum()) != graph_features.shape[0]:
            raise ValueError(
                f"the prompt has {int(slot_mask.sum())} graph-token slots but its molecules gave {graph_features.shape[0]} graph vectors"
            )
        return embeddings.masked_scatter(slot_mask, graph_features)

    def prompt_embeddings(self, messages: list[dict], add_generation_prompt: bool = True) -> PromptEmbeddings:
        """Render, featurize and project one conversation: the embeddings vLLM receives as `prompt_embeds`."""
        inputs = self.render(messages, add_generation_prompt=add_generation_prompt)
        embeddings = self.embed_inputs(inputs)[0]
        return PromptEmbeddings(input_ids=inputs["input_ids"][0].tolist(), embeddings=embeddings)


__all__ = ["LlamoFrontEnd", "PromptEmbeddings", "FRONTEND_WEIGHTS"]
