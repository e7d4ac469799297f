"""A tiny LLaMo that vLLM's CPU attention accepts: head_dim 32 (the default tiny model's 16 is rejected)."""

from __future__ import annotations

from configuration_llamo import LlamoConfig
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor

from ..tiny import TINY_GRAPH_CONFIG, load_tiny_tokenizer, tiny_llama_config


# vLLM's CPU attention supports head sizes 32, 64, 80, 96, ... : 2 heads of 32 at the tiny width of 64.
SERVABLE_TEXT_OVERRIDES = dict(num_attention_heads=2, num_key_value_heads=1, head_dim=32)


def build_servable_tiny_llamo(seed: int = 0, **overrides) -> tuple[LlamoForConditionalGeneration, LlamoProcessor]:
    """Randomly initialized tiny LLaMo (fp32, `seed` fixes the weights) with a vLLM-compatible head size."""
    import torch

    tokenizer = load_tiny_tokenizer()
    text_config = tiny_llama_config(tokenizer, **SERVABLE_TEXT_OVERRIDES)
    config = LlamoConfig(
        text_config=text_config, graph_token_id=tokenizer.convert_tokens_to_ids("<graph>"), **{**TINY_GRAPH_CONFIG, **overrides}
    )
    torch.manual_seed(seed)
    model = LlamoForConditionalGeneration(config).eval()
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    return model, LlamoProcessor(tokenizer=tokenizer, num_graph_tokens=config.num_graph_tokens)


# Molecules and questions of the serving test and benchmark: small drugs, salts, charges, a single atom.
SERVING_SMILES = (
    "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "CC(=O)Nc1ccc(O)cc1",
    "C", "c1ccccc1", "[Na+].[Cl-]", "C[C@@H]([NH3+])C(=O)[O-]", "OCC(O)CO", "CCN(CC)CC", "O=C=O", "CC#N",
    "c1ccc2ccccc2c1", "C1CCCCC1", "CC(C)(C)O", "NC(=O)N", "OC(=O)CCC(=O)O", "CCOC(=O)C", "c1ccncc1", "C=CC=C",
    "CS(C)=O", "ClC(Cl)Cl", "OC1=CC=CC=C1", "CC(=O)C", "N#Cc1ccccc1", "O=S(=O)(O)O", "CCCCCCCC", "c1ccsc1",
    "CN(C)C=O", "OC(=O)c1ccccc1O", "C1=CC=C(C=C1)N", "N.N.Cl[Pt]Cl",
)  # fmt: skip
SERVING_QUESTIONS = (
    "Describe this molecule.", "What is the IUPAC name of this molecule?", "Is this molecule soluble in water?",
    "List its functional groups.", "Which of these molecules is larger?", "Compare these two molecules.",
)  # fmt: skip


def serving_conversations(count: int) -> list[list[dict]]:
    """`count` distinct conversations with one or two molecules each; every fifth is multi-turn (a molecule in
    each user turn, an assistant answer between them)."""
    conversations = []
    for index in range(count):
        first = SERVING_SMILES[index % len(SERVING_SMILES)]
        second = SERVING_SMILES[(7 * index + 3) % len(SERVING_SMILES)]
        question = SERVING_QUESTIONS[index % len(SERVING_QUESTIONS)]
        if index % 5 == 4:
            conversations.append(
                [
                    {"role": "user", "content": [{"type": "molecule", "smiles": first}, {"type": "text", "text": question}]},
                    {"role": "assistant", "content": "It is a small organic molecule."},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "And this one?"}, {"type": "molecule", "smiles": second}],
                    },
                ]
            )
        elif index % 2:
            content = [
                {"type": "molecule", "smiles": first},
                {"type": "molecule", "smiles": second},
                {"type": "text", "text": question},
            ]
            conversations.append([{"role": "user", "content": content}])
        else:
            conversations.append(
                [{"role": "user", "content": [{"type": "molecule", "smiles": first}, {"type": "text", "text": question}]}]
            )
    return conversations
