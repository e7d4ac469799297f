"""Convert the original LLaMo checkpoint (mlvlab/LLaMo, a PyTorch-Lightning `.ckpt`) into a Hub-ready folder.

The folder holds config, safetensors weights, generation config, processor + tokenizer, the remote-code files and a
model card; it loads with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` and can be pushed
to the Hub as it is. Only the base LLM's config and tokenizer are read from `--base_model`: every weight, the
stage-1-trained input embeddings included, comes from the checkpoint.

    llamo-convert --checkpoint last.ckpt --base_model Llama-2-7b-chat-hf --output_dir llamo-7b

What happens to the original's state dict (key layout: docs, `llamo-original.md` section 6):

* GIN (`mllm.graph_model.molecule_node_model.*`) and projector (`mllm.abstractor.*`) are renamed, BatchNorm running
  statistics included. The projector's six `cross_attention.{0..5}` entries are aliases of one shared module: they
  must be identical and become our single shared attention (or, with `share_level_cross_attention=False`, six).
* The LLM (`mllm.language_model.base_model.model.*`, PEFT-wrapped; `mllm.language_model.*` in a stage-1 checkpoint)
  keeps the checkpoint's embedding table. LoRA is merged into the base weights (W + alpha/r * B @ A, computed in
  fp32) or kept as a PEFT adapter in `adapter/`.
* `<graph>` becomes a special token after the original's `<pad>` (id = 32,001 for Llama-2). Its input-embedding row
  is never read (graph vectors replace it); it is the mean of the table, checked to differ from every other row
  because `inputs_embeds`-only calls find the slots by comparing rows. Its `lm_head` row copies the `<unk>` row, a
  token the LLM learned never to emit, and the generation config suppresses the id outright.
* Keys the model does not need are reported (ignored with a reason, or unused); missing keys are an error, except
  `num_batches_tracked` (filled with 0, which only matters with BatchNorm momentum=None).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass, field

import torch
from huggingface_hub import ModelCard, ModelCardData
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from configuration_llamo import LlamoConfig
from llamo.saving import make_inference_ready
from modeling_llamo import LlamoForConditionalGeneration
from processing_llamo import LlamoProcessor


GRAPH_ENCODER_PREFIX = "mllm.graph_model.molecule_node_model."
PROJECTOR_PREFIX = "mllm.abstractor."
PEFT_LANGUAGE_MODEL_PREFIX = "mllm.language_model.base_model.model."
PLAIN_LANGUAGE_MODEL_PREFIX = "mllm.language_model."  # stage-1 checkpoints: no PEFT wrapping
EMBEDDING_KEY = "model.language_model.embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"
ORIGINAL_PAD_TOKEN = "<pad>"  # the original adds it to Llama-2's vocabulary before training (id 32,000)
ORIGINAL_LORA_ALPHA = 32  # hard-coded in the original (r=8 is read from the weights)
ORIGINAL_PROJECTOR_NUM_HEADS = 4  # hard-coded in the original, not recoverable from weight shapes
# Greedy decoding as the original evaluates (stage.py: num_beams=1, do_sample=False, max_len 512 new tokens).
ORIGINAL_GENERATION = {"max_new_tokens": 512, "num_beams": 1, "do_sample": False}

# Original keys that hold nothing our model needs, and why.
IGNORED_KEYS = (
    (re.compile(r"mllm\.(graph_model\.)?ln_graph_model\."), "LayerNorm on the GNN output whose result the original never uses"),
    (re.compile(r"mllm\.graph_model\.graph_pred_linear\."), "MoleculeSTM property head, not part of LLaMo's forward"),
    (re.compile(r"\.rotary_emb\.inv_freq$"), "rotary-embedding buffer, recomputed from the config"),
)
LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<matrix>[AB])\.(?P<adapter>[^.]+)\.weight")


@dataclass(frozen=True)
class KeyRule:
    """An original key pattern and our name for it; `{name}` stands for one dot-free component."""

    original: str
    ours: str

    @staticmethod
    @functools.cache
    def _pattern(template: str) -> re.Pattern:
        return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^.]+)", re.escape(template)) + "$")

    def to_ours(self, key: str) -> str | None:
        match = self._pattern(self.original).match(key)
        return self.ours.format(**match.groupdict()) if match else None

    def to_original(self, key: str) -> str | None:
        match = self._pattern(self.ours).match(key)
        return self.original.format(**match.groupdict()) if match else None


# original (after GRAPH_ENCODER_PREFIX) -> ours (after "model.graph_encoder.")
GRAPH_ENCODER_RULES = (
    KeyRule("atom_encoder.atom_embedding_list.{column}.weight", "atom_embedding.embeddings.{column}.weight"),
    KeyRule("gnns.{layer}.eps", "layers.{layer}.conv.eps"),
    KeyRule("gnns.{layer}.mlp.0.{param}", "layers.{layer}.conv.nn.0.{param}"),
    KeyRule("gnns.{layer}.mlp.1.{param}", "layers.{layer}.conv.nn.1.module.{param}"),  # BatchNorm1d inside the GIN MLP
    KeyRule("gnns.{layer}.mlp.3.{param}", "layers.{layer}.conv.nn.3.{param}"),
    KeyRule(
        "gnns.{layer}.bond_encoder.bond_embedding_list.{column}.weight",
        "layers.{layer}.bond_embedding.embeddings.{column}.weight",
    ),
    KeyRule("batch_norms.{layer}.{param}", "layers.{layer}.batch_norm.module.{param}"),
)
# original (after PROJECTOR_PREFIX) -> ours (after "model.projector."); `cross_attention.*` is handled apart (aliases)
PROJECTOR_RULES = (
    KeyRule("query_tokens", "level_queries"),
    KeyRule("motif_query_tokens", "motif_queries"),
    KeyRule("motif_weight.weight", "motif_embedding.weight"),
    KeyRule("motif_cross_attention.{param}", "motif_attention.{param}"),
    KeyRule("motif_cross_attention.out_proj.{param}", "motif_attention.out_proj.{param}"),
    KeyRule("layer_norm.{param}", "head.layer_norm.{param}"),
    KeyRule("net.{index}.{param}", "head.mlp.{index}.{param}"),
)
LEVEL_ATTENTION_RULES = (
    KeyRule("cross_attention.{level}.{param}", "level_attentions.{level}.{param}"),
    KeyRule("cross_attention.{level}.out_proj.{param}", "level_attentions.{level}.out_proj.{param}"),
)


class CheckpointConversionError(ValueError):
    """The checkpoint cannot be converted; `report` holds what was found up to that point."""

    def __init__(self, message: str, report: ConversionReport):
        super().__init__(message)
        self.report = report


@dataclass
class ConversionReport:
    """What the conversion did with every key of the original state dict."""

    checkpoint: str
    training_stage: str = ""  # "stage 2 (LoRA)" or "stage 1 (no LoRA)"
    metadata: dict = field(default_factory=dict)  # Lightning's epoch, global_step, version
    converted: dict[str, str] = field(default_factory=dict)  # our key -> original key it comes from
    aliases: dict[str, str] = field(default_factory=dict)  # original alias key -> the key it is identical to
    ignored: dict[str, str] = field(default_factory=dict)  # original key -> why it is not needed
    unused: list[str] = field(default_factory=list)  # original keys no rule claims
    filled: dict[str, str] = field(default_factory=dict)  # our key missing from the checkpoint -> what was used
    lora: dict = field(default_factory=dict)  # rank, alpha, scale, modules, merged or kept as adapter
    added_tokens: dict[str, int] = field(default_factory=dict)
    output_dir: str | None = None

    def summary(self) -> str:
        lines = [
            f"checkpoint: {self.checkpoint} ({self.training_stage}; {', '.join(f'{k}={v}' for k, v in self.metadata.items())})",
            f"converted: {len(self.converted)} tensors",
            f"shared cross-attention aliases checked identical: {len(self.aliases)}",
            f"added tokens: {self.added_tokens}",
        ]
        if self.lora:
            lora = {key: value for key, value in self.lora.items() if key != "modules"}
            lines.append(f"LoRA on {len(self.lora.get('modules', []))} modules: {lora}")
        for title, entries in (("ignored", self.ignored), ("filled (missing from the checkpoint)", self.filled)):
            lines.append(f"{title}: {len(entries)}")
            lines += [f"  {key}: {reason}" for key, reason in entries.items()]
        lines.append(f"unused (not recognized): {len(self.unused)}")
        lines += [f"  {key}" for key in self.unused]
        if self.output_dir:
            lines.append(f"written to: {self.output_dir}")
        return "\n".join(lines)


def load_original_checkpoint(path: str | pathlib.Path, allow_unsafe_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict and Lightning metadata (epoch, global_step, version) of an original LLaMo checkpoint.

    Loads with `weights_only=True`; a file that needs arbitrary unpickling is refused unless `allow_unsafe_pickle`.
    Also accepts a bare state dict (`.pt`/`.ckpt` or `.safetensors`) with the original `mllm.` keys.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory, not a checkpoint file: a sharded DeepSpeed/FSDP Lightning checkpoint must first be "
            "consolidated into one file (e.g. lightning's `convert_zero_checkpoint_to_fp32_state_dict`)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path), {}
    try:  # mmap: the 7B checkpoint is read lazily instead of being copied into memory
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_unsafe_pickle, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        objects = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        raise ValueError(
            f"{path}: torch.load(weights_only=True) refused to unpickle it: besides tensors it stores {objects}. If you "
            "trust the file, rerun with allow_unsafe_pickle=True (--allow_unsafe_pickle), which executes code stored in it"
        ) from error

    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state_dict = checkpoint["state_dict"]
        metadata = {key: checkpoint[key] for key in ("epoch", "global_step", "pytorch-lightning_version") if key in checkpoint}
    elif isinstance(checkpoint, dict) and any(isinstance(key, str) and key.startswith("mllm.") for key in checkpoint):
        state_dict, metadata = checkpoint, {}
    else:
        found = sorted(map(str, checkpoint))[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not an original LLaMo checkpoint: expected a Lightning dict with a 'state_dict' or a state dict "
            f"with 'mllm.' keys, found {found}"
        )
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: state_dict entries that are not tensors: {not_tensors[:5]}")
    return state_dict, metadata


def rename_with_rules(
    state_dict: dict[str, torch.Tensor], original_prefix: str, our_prefix: str, rules: tuple[KeyRule, ...]
) -> tuple[dict[str, str], list[str]]:
    """Map the keys under `original_prefix` through `rules`: (our key -> original key, keys no rule matches)."""
    sources, unmatched = {}, []
    for key in state_dict:
        if not key.startswith(original_prefix):
            continue
        relative = key[len(original_prefix) :]
        ours = next((name for rule in rules if (name := rule.to_ours(relative)) is not None), None)
        if ours is None:
            unmatched.append(key)
        else:
            sources[our_prefix + ours] = key
    return sources, unmatched


def convert_level_attentions(
    state_dict: dict[str, torch.Tensor], share_level_cross_attention: bool, report: ConversionReport
) -> dict[str, str]:
    """Our level attention(s) -> original key. Shared: the six aliases must be identical and collapse to level 0."""
    sources, _ = rename_with_rules(state_dict, PROJECTOR_PREFIX, "model.projector.", LEVEL_ATTENTION_RULES)
    if not share_level_cross_attention:
        return sources
    shared = {}
    for ours, original in sorted(sources.items()):
        first_level = re.sub(r"level_attentions\.\d+\.", "level_attentions.0.", ours)
        reference_key = sources.get(first_level)
        if ours == first_level:
            shared[ours] = original
        elif reference_key is not None and torch.equal(state_dict[original], state_dict[reference_key]):
            report.aliases[original] = reference_key
        else:
            raise CheckpointConversionError(
                f"{original} differs from {reference_key}: this checkpoint has one cross-attention per level, not one "
                "shared module; convert it with share_level_cross_attention=False (--per_level_attention)",
                report,
            )
    return shared


def merge_lora(base: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, computed in fp32 and rounded once to W's dtype."""
    return (base.float() + scale * (lora_b.float() @ lora_a.float())).to(base.dtype)


def convert_language_model(
    state_dict: dict[str, torch.Tensor], lora_alpha: float, report: ConversionReport
) -> tuple[str, dict[str, str], dict[str, tuple[str, str]], list[str]]:
    """The LLM's original prefix, our LLM keys -> original base key, LoRA pairs per (our) module -> (A key, B key),
    and the LLM keys left for `classify_leftovers`."""
    peft_wrapped = any(key.startswith(PEFT_LANGUAGE_MODEL_PREFIX) for key in state_dict)
    prefix = PEFT_LANGUAGE_MODEL_PREFIX if peft_wrapped else PLAIN_LANGUAGE_MODEL_PREFIX
    report.training_stage = "stage 2 (LoRA)" if peft_wrapped else "stage 1 (no LoRA)"
    sources, lora_keys, unmatched = {}, {}, []
    for key in state_dict:
        if not key.startswith(PLAIN_LANGUAGE_MODEL_PREFIX):
            continue
        if not key.startswith(prefix) or any(pattern.search(key) for pattern, _ in IGNORED_KEYS):
            unmatched.append(key)
            continue
        relative = key[len(prefix) :].replace(".base_layer.", ".")
        if (lora := LORA_KEY.fullmatch(relative)) is not None:
            lora_keys.setdefault(lora["module"], {})[lora["matrix"]] = key
            report.lora.setdefault("adapter_names", set()).add(lora["adapter"])
        elif ".lora_" in relative:
            raise CheckpointConversionError(f"{key}: unsupported LoRA parameter (only lora_A / lora_B are converted)", report)
        elif relative.startswith("model."):
            sources["model.language_model." + relative[len("model.") :]] = key
        elif relative.startswith("lm_head."):
            sources[relative] = key
        else:
            unmatched.append(key)

    pairs = {}
    for module, matrices in lora_keys.items():
        if set(matrices) != {"A", "B"}:
            raise CheckpointConversionError(
                f"LoRA of {prefix}{module} has only lora_{''.join(matrices)}: both A and B are needed", report
            )
        pairs["model.language_model." + module[len("model.") :]] = (matrices["A"], matrices["B"])
    if pairs:
        adapter_names = report.lora.pop("adapter_names")
        if len(adapter_names) > 1:
            raise CheckpointConversionError(
                f"several LoRA adapters in the checkpoint ({sorted(adapter_names)}); expected one", report
            )
        ranks = {state_dict[key_a].shape[0] for key_a, _ in pairs.values()}
        if len(ranks) != 1:
            raise CheckpointConversionError(f"LoRA ranks differ between modules: {sorted(ranks)}", report)
        rank = ranks.pop()
        report.lora.update(
            rank=rank, alpha=lora_alpha, scale=lora_alpha / rank, modules=sorted(pairs), adapter_name=adapter_names.pop()
        )
    return prefix, sources, pairs, unmatched


def separate_shared_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors whose memory another entry already uses (the original's aliases, kept per level): each of our
    modules owns its weights, and safetensors refuses shared storage."""
    seen, separate = set(), {}
    for key, value in tensors.items():
        pointer = value.untyped_storage().data_ptr()
        separate[key] = value.clone() if pointer in seen and value.numel() else value
        seen.add(pointer)
    return separate


def classify_leftovers(keys: list[str], report: ConversionReport) -> None:
    for key in keys:
        reason = next((why for pattern, why in IGNORED_KEYS if pattern.search(key)), None)
        if reason is None:
            report.unused.append(key)
        else:
            report.ignored[key] = reason


def prepare_tokenizer(base_model: str | pathlib.Path, embedding_rows: int, graph_token: str) -> PreTrainedTokenizerBase:
    """The base LLM's tokenizer with the original's `<pad>` (id = base vocabulary) and then `graph_token`."""
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if ORIGINAL_PAD_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"pad_token": ORIGINAL_PAD_TOKEN})
    if len(tokenizer) != embedding_rows:
        raise ValueError(
            f"the tokenizer of {base_model} has {len(tokenizer)} tokens with {ORIGINAL_PAD_TOKEN}, but the checkpoint's "
            f"embedding table has {embedding_rows} rows (Llama-2: 32,000 + <pad> = 32,001); pass the base model the "
            "checkpoint was trained from"
        )
    tokenizer.add_special_tokens({"additional_special_tokens": [graph_token]})
    tokenizer.chat_template = None  # LLaMo's prompt layout lives in the processor's chat template
    return tokenizer


def infer_config(
    tensors: dict[str, torch.Tensor],
    base_model: str | pathlib.Path,
    tokenizer: PreTrainedTokenizerBase,
    graph_token: str,
    projector_num_heads: int,
    share_level_cross_attention: bool,
    motif_tokens_first: bool,
) -> LlamoConfig:
    """LlamoConfig: the base LLM's config with the grown vocabulary, graph sizes read from the converted weights
    (OGB defaults for anything absent, so that a missing key is reported against the full expected layout)."""
    text_config = AutoConfig.from_pretrained(base_model)
    special_ids = ("pad_token_id", "bos_token_id", "eos_token_id")
    text_config.update({"vocab_size": len(tokenizer), **{name: getattr(tokenizer, name) for name in special_ids}})
    prefix = "model.graph_encoder."

    def rows(key: str) -> int | None:
        return tensors[key].shape[0] if key in tensors else None

    def indices(pattern: str) -> list[int]:
        return sorted({int(match[1]) for key in tensors if (match := re.fullmatch(pattern, key))})

    defaults = LlamoConfig(text_config=text_config)
    atom_sizes = [
        rows(f"{prefix}atom_embedding.embeddings.{i}.weight") or size for i, size in enumerate(defaults.atom_feature_vocab_sizes)
    ]
    bond_sizes = [
        rows(f"{prefix}layers.0.bond_embedding.embeddings.{i}.weight") or size
        for i, size in enumerate(defaults.bond_feature_vocab_sizes)
    ]
    layers = indices(re.escape(prefix) + r"layers\.(\d+)\..+")
    level_queries = tensors.get("model.projector.level_queries")
    motif_embedding = tensors.get("model.projector.motif_embedding.weight")
    motif_queries = tensors.get("model.projector.motif_queries")
    if level_queries is None or level_queries.dim() != 3:
        raise ValueError("the checkpoint has no usable mllm.abstractor.query_tokens [levels, queries, hidden]")
    if layers and level_queries.shape[0] != max(layers) + 2:
        raise ValueError(
            f"mllm.abstractor.query_tokens has {level_queries.shape[0]} levels but the GIN has {max(layers) + 1} layers "
            f"(expected {max(layers) + 2} levels: the atom embeddings and one per layer)"
        )
    return LlamoConfig(
        text_config=text_config,
        gnn_num_layers=level_queries.shape[0] - 1,
        gnn_hidden_size=level_queries.shape[2],
        atom_feature_vocab_sizes=atom_sizes,
        bond_feature_vocab_sizes=bond_sizes,
        projector_type="multilevel",
        num_query_tokens_per_level=level_queries.shape[1],
        num_motif_query_tokens=motif_queries.shape[0] if motif_queries is not None else defaults.num_motif_query_tokens,
        motif_feature_size=motif_embedding.shape[1] if motif_embedding is not None else defaults.motif_feature_size,
        projector_num_heads=projector_num_heads,
        projector_mlp_depth=len(indices(r"model\.projector\.head\.mlp\.(\d+)\.weight")),
        projector_hidden_act="silu",
        motif_tokens_first=motif_tokens_first,
        share_level_cross_attention=share_level_cross_attention,
        graph_token_id=tokenizer.convert_tokens_to_ids(graph_token),
    )


def original_name(key: str, report: ConversionReport, llm_prefix: str) -> str:
    """Best guess of the original key a missing key of ours would come from (for error messages)."""
    for our_prefix, original_prefix, rules in (
        ("model.graph_encoder.", GRAPH_ENCODER_PREFIX, GRAPH_ENCODER_RULES),
        ("model.projector.", PROJECTOR_PREFIX, PROJECTOR_RULES + LEVEL_ATTENTION_RULES),
    ):
        if key.startswith(our_prefix):
            relative = key[len(our_prefix) :]
            return next((original_prefix + name for rule in rules if (name := rule.to_original(relative))), key)
    if key.startswith("model.language_model."):
        module, _, param = key.rpartition(".")
        base_layer = ".base_layer" if module in report.lora.get("modules", ()) else ""
        return f"{llm_prefix}model.{module[len('model.language_model.') :]}{base_layer}.{param}"
    return llm_prefix + key


def append_graph_token_rows(tensors: dict[str, torch.Tensor], logits_like_id: int) -> None:
    """Grow the input and output embeddings by one row for the `<graph>` slot token (see the module docstring)."""
    embeddings = tensors[EMBEDDING_KEY]
    graph_row = embeddings.float().mean(dim=0, keepdim=True).to(embeddings.dtype)
    if (embeddings == graph_row).all(dim=-1).any():
        raise ValueError(f"{EMBEDDING_KEY}: the mean row equals an existing row, so <graph> slots could not be told apart")
    tensors[EMBEDDING_KEY] = torch.cat([embeddings, graph_row])
    if (lm_head := tensors.get(LM_HEAD_KEY)) is not None:  # absent: reported as missing by check_against_model
        tensors[LM_HEAD_KEY] = torch.cat([lm_head, lm_head[logits_like_id : logits_like_id + 1]])


def check_against_model(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], report: ConversionReport, llm_prefix: str
) -> None:
    """Every tensor the model needs is there with the right shape; fills what may be missing, raises otherwise."""
    for key in sorted(expected.keys() - tensors.keys()):
        if key.endswith("num_batches_tracked"):  # BatchNorm checkpoints from old PyTorch lack it; momentum ignores it
            tensors[key] = torch.zeros((), dtype=torch.long)
            report.filled[key] = "0 (absent from the checkpoint)"
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    wrong_shapes = [
        f"{report.converted.get(key, key)} -> {key}: checkpoint {list(tensors[key].shape)}, model expects {list(expected[key].shape)}"
        for key in sorted(tensors.keys() & expected.keys())
        if tensors[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(
            "missing from the checkpoint:\n  "
            + "\n  ".join(f"{original_name(key, report, llm_prefix)} (-> {key})" for key in missing)
        )
    if unexpected:
        problems.append(
            "converted but unknown to the model:\n  "
            + "\n  ".join(f"{report.converted.get(key, key)} -> {key}" for key in unexpected)
        )
    if wrong_shapes:
        problems.append("wrong shapes:\n  " + "\n  ".join(wrong_shapes))
    if problems:
        raise CheckpointConversionError(
            f"{report.checkpoint} does not fit the LLaMo architecture:\n" + "\n".join(problems), report
        )


def save_lora_adapter(
    model: LlamoForConditionalGeneration,
    lora_state_dict: dict[str, torch.Tensor],
    report: ConversionReport,
    output_dir: pathlib.Path,
) -> None:
    """The original's LoRA (r from the weights, alpha, dropout 0.05, q/v projections) as a PEFT adapter folder."""
    leaf_names = sorted({module.rsplit(".", 1)[-1] for module in report.lora["modules"]})
    lora_config = LoraConfig(
        r=report.lora["rank"],
        lora_alpha=report.lora["alpha"],
        lora_dropout=0.05,
        target_modules=rf"model\.language_model\..*\.({'|'.join(map(re.escape, leaf_names))})",
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora_config, low_cpu_mem_usage=True)  # wraps `model` in place
    result = set_peft_model_state_dict(peft_model, lora_state_dict, low_cpu_mem_usage=True)
    if result.unexpected_keys:
        raise RuntimeError(f"PEFT did not place these LoRA weights: {result.unexpected_keys[:5]}")
    peft_model.save_pretrained(output_dir)
    (output_dir / "README.md").unlink(missing_ok=True)  # PEFT's blank card template; the folder's card covers the adapter


MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# LLaMo ({{ base_model }}), converted from the original implementation

LLaMo (Large Language Model-based Molecular Graph Assistant, Park et al., NeurIPS 2024,
[arXiv 2411.00871](https://arxiv.org/abs/2411.00871)) answers instructions about molecules given as SMILES:
a GIN encodes the molecular graph, a multi-level graph projector turns it into {{ num_graph_tokens }} graph tokens,
and {{ base_model }} reads them next to the prompt.

The weights come from a PyTorch-Lightning checkpoint of the original implementation,
[mlvlab/LLaMo](https://github.com/mlvlab/LLaMo) (`{{ checkpoint_name }}`: {{ training_stage }}, {{ metadata }}), converted
with `convert_llamo_original_checkpoint.py`. The code files next to them are a transformers re-implementation, not
the authors' code.

```python
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)
messages = [{"role": "user", "content": [
    {"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"},
    {"type": "text", "text": "Describe this molecule."}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt")
out = model.generate(**inputs)  # greedy, up to 512 new tokens, as the original evaluates
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Conversion

- LoRA: {{ lora }}
- Graph tokens: {{ token_order }}; {{ attention }}.
  The released code puts the motif tokens first, the paper (Eq. 5) last; which order a checkpoint was trained with
  is not documented. If answers look off, convert again with `--motif_tokens_last` and compare.
- Weights: all from the checkpoint, including the input embeddings the original trains in stage 1 and its `<pad>`
  row; only the base model's config and tokenizer were read.
- Tokenizer: the base model's, plus the original's `<pad>` and a `<graph>` slot token ({{ added_tokens }}).
  The `<graph>` input-embedding row is never used (graph vectors replace it); its `lm_head` row copies `<unk>`'s
  and the generation config suppresses it, so it is never generated.
- Prompt: the Llama-2 `[INST] <<SYS>>` layout with LLaMo's system message, and the SMILES (canonical,
  non-isomeric, at most 128 characters) before the graph slots.
{%- if piecewise %}
  Each text piece between slots is tokenized on its own, as the original does (`piecewise_tokenization=True`).
{%- else %}
  The prompt is tokenized in one call (`piecewise_tokenization=False`), which can differ from the original's
  piece-wise tokenization next to the slots.
{%- endif %}

## Known differences from the original

- Functional groups (motifs) are computed from the parsed molecule rather than a re-parsed canonical SMILES; the
  groups agree on the repository's test molecules, and a molecule whose extraction failed in the original (an
  atom of degree > 10) gets its groups here. RDKit versions can change ring perception.
- The original ran in bf16 autocast; results in other precisions differ within rounding.

## License

The base model's license applies to the language-model weights ({{ license }}). The LLaMo authors' repository states
no license for its checkpoint: check with them before redistributing.

## Citation

```bibtex
@inproceedings{park2024llamo,
  title     = {LLaMo: Large Language Model-based Molecular Graph Assistant},
  author    = {Park, Jinyoung and Bae, Minseong and Ko, Dohwan and Kim, Hyunwoo J.},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024}
}
```
"""


def write_model_card(
    output_dir: pathlib.Path,
    config: LlamoConfig,
    report: ConversionReport,
    base_model_id: str,
    model_license: str,
    piecewise: bool,
) -> None:
    """README.md with the Hub metadata header (license, base model, tags) and what the conversion did."""
    card_data = ModelCardData(
        license=model_license,
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base_model_id,
        tags=["chemistry", "molecules", "graph-neural-network", "multimodal", "llamo"],
    )
    if not report.lora:
        lora = "none (stage-1 checkpoint)"
    elif report.lora["merged"]:
        lora = f"merged into the base weights (W + {report.lora['alpha']:g}/{report.lora['rank']} B A, fp32 then rounded)"
    else:
        lora = f"kept as a PEFT adapter in `adapter/` (r={report.lora['rank']}, alpha={report.lora['alpha']:g}); load it with `PeftModel.from_pretrained(model, repo_id, subfolder='adapter')`"
    card = ModelCard.from_template(
        card_data,
        template_str=MODEL_CARD_TEMPLATE,
        base_model=base_model_id,
        checkpoint_name=pathlib.Path(report.checkpoint).name,
        num_graph_tokens=config.num_graph_tokens,
        training_stage=report.training_stage,
        metadata=", ".join(f"{key} {value}" for key, value in report.metadata.items()) or "no training metadata",
        lora=lora,
        token_order="motif tokens first, then the levels" if config.motif_tokens_first else "level tokens first, then the motifs",
        attention="one cross-attention shared by all levels"
        if config.share_level_cross_attention
        else "one cross-attention per level",
        added_tokens=", ".join(f"`{token}` = {index}" for token, index in report.added_tokens.items()),
        piecewise=piecewise,
        license=model_license,
    )
    card.save(output_dir / "README.md")


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    report: ConversionReport,
    *,
    share_level_cross_attention: bool,
    lora_alpha: float,
    keep_lora_adapter: bool,
    strict: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """Rename the original tensors and merge LoRA (unless kept): our tensors (vocabulary still the checkpoint's), the
    PEFT adapter's tensors when LoRA is kept, and the LLM's original key prefix. Fills `report`."""
    graph_sources, graph_leftovers = rename_with_rules(
        state_dict, GRAPH_ENCODER_PREFIX, "model.graph_encoder.", GRAPH_ENCODER_RULES
    )
    projector_sources, projector_leftovers = rename_with_rules(state_dict, PROJECTOR_PREFIX, "model.projector.", PROJECTOR_RULES)
    attention_sources = convert_level_attentions(state_dict, share_level_cross_attention, report)
    llm_prefix, llm_sources, lora_pairs, llm_leftovers = convert_language_model(state_dict, lora_alpha, report)
    if keep_lora_adapter and not lora_pairs:
        raise CheckpointConversionError(
            f"{report.checkpoint} has no LoRA weights to keep as an adapter (stage-1 checkpoint?)", report
        )
    report.converted = {**graph_sources, **projector_sources, **attention_sources, **llm_sources}

    claimed = set(report.converted.values()) | set(report.aliases) | {key for pair in lora_pairs.values() for key in pair}
    elsewhere = [
        key for key in state_dict if not key.startswith((GRAPH_ENCODER_PREFIX, PROJECTOR_PREFIX, PLAIN_LANGUAGE_MODEL_PREFIX))
    ]
    leftovers = graph_leftovers + projector_leftovers + llm_leftovers + elsewhere
    classify_leftovers([key for key in leftovers if key not in claimed], report)
    if strict and report.unused:
        raise CheckpointConversionError(f"unrecognized checkpoint keys (strict): {report.unused}", report)

    tensors = separate_shared_storage({ours: state_dict[original] for ours, original in report.converted.items()})
    adapter_tensors = {}
    for module, (key_a, key_b) in lora_pairs.items():
        lora_a, lora_b, weight_key = state_dict[key_a], state_dict[key_b], f"{module}.weight"
        base = tensors.get(weight_key)
        if base is None:  # reported with the other missing keys by check_against_model
            continue
        if lora_a.shape[1] != base.shape[1] or lora_b.shape != (base.shape[0], lora_a.shape[0]):
            raise CheckpointConversionError(
                f"LoRA shapes do not fit {report.converted[weight_key]} {list(base.shape)}: "
                f"lora_A {list(lora_a.shape)}, lora_B {list(lora_b.shape)}",
                report,
            )
        if keep_lora_adapter:  # PEFT's saved-adapter names: no adapter name, `base_model.model.` prefix
            adapter_tensors[f"base_model.model.{module}.lora_A.weight"] = lora_a
            adapter_tensors[f"base_model.model.{module}.lora_B.weight"] = lora_b
        else:
            tensors[weight_key] = merge_lora(base, lora_a, lora_b, report.lora["scale"])
    if report.lora:
        report.lora["merged"] = not keep_lora_adapter
    return tensors, adapter_tensors, llm_prefix


def build_model(
    tensors: dict[str, torch.Tensor], config: LlamoConfig, report: ConversionReport, llm_prefix: str, dtype: torch.dtype | None
) -> LlamoForConditionalGeneration:
    """The model on the converted tensors (assigned, not copied), after checking them against the architecture."""
    with torch.device("meta"):  # names and shapes only: every weight comes from the checkpoint
        model = LlamoForConditionalGeneration(config)
    check_against_model(tensors, model.state_dict(), report, llm_prefix)
    if dtype is not None:
        keep_fp32 = tuple(f".{name}." for name in model._keep_in_fp32_modules_strict)
        tensors = {
            key: value.to(dtype) if value.is_floating_point() and not any(part in f".{key}" for part in keep_fp32) else value
            for key, value in tensors.items()
        }
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


def convert_llamo_checkpoint(
    checkpoint_path: str | pathlib.Path,
    base_model: str | pathlib.Path,
    output_dir: str | pathlib.Path,
    *,
    keep_lora_adapter: bool = False,
    share_level_cross_attention: bool = True,
    motif_tokens_first: bool = True,
    lora_alpha: float = ORIGINAL_LORA_ALPHA,
    projector_num_heads: int = ORIGINAL_PROJECTOR_NUM_HEADS,
    dtype: torch.dtype | None = None,
    piecewise_tokenization: bool = True,
    graph_token: str = "<graph>",
    strict: bool = False,
    allow_unsafe_pickle: bool = False,
    base_model_id: str = "meta-llama/Llama-2-7b-chat-hf",
    model_license: str = "llama2",
) -> ConversionReport:
    """Convert an original LLaMo checkpoint into a `from_pretrained` folder and report what happened to every key.

    Args:
        checkpoint_path: the Lightning `.ckpt` (or a bare state dict with the original `mllm.` keys).
        base_model: folder (or Hub id, when online) of the base LLM; only its config and tokenizer are read.
        output_dir: where the Hub-ready folder is written.
        keep_lora_adapter: write the LLM without LoRA plus a PEFT adapter in `output_dir/adapter` instead of merging.
        share_level_cross_attention: the checkpoint's per-level cross-attentions are one shared module (original
            code); False keeps one attention per level.
        motif_tokens_first: token order of the released code (False: the paper's, motifs last).
        lora_alpha: LoRA alpha of the original (its rank is read from the weights).
        projector_num_heads: heads of the projector's attention (4 in the original; not visible in the weights).
        dtype: cast the weights (the graph encoder and the projector's LayerNorm stay fp32); None keeps the
            checkpoint's dtypes and records the LLM's as the folder's default.
        piecewise_tokenization: save the processor with the original's piece-wise tokenization.
        graph_token: the slot token added to the tokenizer.
        strict: fail on checkpoint keys that no rule recognizes (they are only reported otherwise).
        allow_unsafe_pickle: load a checkpoint that `torch.load(weights_only=True)` refuses (trusted files only).
        base_model_id, model_license: model-card metadata.

    Raises:
        CheckpointConversionError: missing keys, wrong shapes, non-identical attention aliases, LoRA problems
            (its `report` holds what was found).
    """
    output_dir = pathlib.Path(output_dir)
    state_dict, metadata = load_original_checkpoint(checkpoint_path, allow_unsafe_pickle=allow_unsafe_pickle)
    report = ConversionReport(checkpoint=str(checkpoint_path), metadata=metadata)
    tensors, adapter_tensors, llm_prefix = convert_state_dict(
        state_dict,
        report,
        share_level_cross_attention=share_level_cross_attention,
        lora_alpha=lora_alpha,
        keep_lora_adapter=keep_lora_adapter,
        strict=strict,
    )
    if EMBEDDING_KEY not in tensors:
        raise CheckpointConversionError(f"missing from the checkpoint: {llm_prefix}model.embed_tokens.weight", report)
    language_model_dtype = dtype if dtype is not None else tensors[EMBEDDING_KEY].dtype

    # The base LLM's tokenizer and config, grown by the original's <pad> and our <graph>.
    tokenizer = prepare_tokenizer(base_model, tensors[EMBEDDING_KEY].shape[0], graph_token)
    report.added_tokens = {token: tokenizer.convert_tokens_to_ids(token) for token in (ORIGINAL_PAD_TOKEN, graph_token)}
    config = infer_config(
        tensors, base_model, tokenizer, graph_token, projector_num_heads, share_level_cross_attention, motif_tokens_first
    )
    append_graph_token_rows(tensors, tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id)
    model = build_model(tensors, config, report, llm_prefix, dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=[config.graph_token_id],
        **ORIGINAL_GENERATION,
    )
    make_inference_ready(model)  # a base LLM saved after training may say `use_cache: false`

    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    # save_pretrained records the first parameter's dtype (the fp32 GIN); the folder's default is the LLM's.
    model.config.dtype = model.config.text_config.dtype = str(language_model_dtype).removeprefix("torch.")
    model.config.save_pretrained(output_dir)
    processor = LlamoProcessor(
        tokenizer=tokenizer, num_graph_tokens=config.num_graph_tokens, piecewise_tokenization=piecewise_tokenization
    )
    processor.save_pretrained(output_dir)
    if keep_lora_adapter:
        save_lora_adapter(model, adapter_tensors, report, output_dir / "adapter")
    write_model_card(output_dir, config, report, base_model_id, model_license, piecewise_tokenization)
    report.output_dir = str(output_dir)
    (output_dir / "conversion_report.json").write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert the original LLaMo Lightning checkpoint into a Hub-ready folder.")
    parser.add_argument(
        "--checkpoint", type=pathlib.Path, required=True, help="the original .ckpt (e.g. all_checkpoints/stage2/last.ckpt)"
    )
    parser.add_argument(
        "--base_model", required=True, help="folder of the base LLM (config + tokenizer), e.g. Llama-2-7b-chat-hf"
    )
    parser.add_argument("--output_dir", type=pathlib.Path, required=True)
    parser.add_argument(
        "--keep_lora_adapter", action="store_true", help="save LoRA as a PEFT adapter in output_dir/adapter instead of merging it"
    )
    parser.add_argument(
        "--per_level_attention", action="store_true", help="one cross-attention per level (share_level_cross_attention=False)"
    )
    parser.add_argument("--motif_tokens_last", action="store_true", help="paper order (motif tokens after the level tokens)")
    parser.add_argument("--lora_alpha", type=float, default=ORIGINAL_LORA_ALPHA)
    parser.add_argument("--projector_num_heads", type=int, default=ORIGINAL_PROJECTOR_NUM_HEADS)
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="cast the weights (default: keep the checkpoint's)"
    )
    parser.add_argument(
        "--no_piecewise_tokenization", action="store_true", help="tokenize prompts in one call instead of the original's pieces"
    )
    parser.add_argument("--strict", action="store_true", help="fail on checkpoint keys that are not recognized")
    parser.add_argument("--allow_unsafe_pickle", action="store_true", help="trusted files only: load with weights_only=False")
    parser.add_argument("--base_model_id", default="meta-llama/Llama-2-7b-chat-hf", help="model-card metadata")
    parser.add_argument("--license", default="llama2", help="model-card metadata")
    args = parser.parse_args(argv)
    try:
        report = convert_llamo_checkpoint(
            args.checkpoint,
            args.base_model,
            args.output_dir,
            keep_lora_adapter=args.keep_lora_adapter,
            share_level_cross_attention=not args.per_level_attention,
            motif_tokens_first=not args.motif_tokens_last,
            lora_alpha=args.lora_alpha,
            projector_num_heads=args.projector_num_heads,
            dtype=getattr(torch, args.dtype) if args.dtype else None,
            piecewise_tokenization=not args.no_piecewise_tokenization,
            strict=args.strict,
            allow_unsafe_pickle=args.allow_unsafe_pickle,
            base_model_id=args.base_model_id,
            model_license=args.license,
        )
    except CheckpointConversionError as error:
        print(error.report.summary())
        raise SystemExit(f"error: {error}") from None
    except (ValueError, FileNotFoundError) as error:  # unreadable checkpoint, tokenizer that does not fit, ...
        raise SystemExit(f"error: {error}") from None
    print(report.summary())


if __name__ == "__main__":
    main()
