"""PyTorch LLaMo: a GIN graph encoder and a multi-level graph projector in front of any causal language model.

Layout follows transformers' LLaVA: `LlamoModel` (graph encoder + projector + the language model's base) and
`LlamoForConditionalGeneration` (+ `lm_head`, `GenerationMixin`). Graph vectors replace the embeddings of the
`<graph>` slot tokens. The forward is tensor work only: molecules arrive already featurized by
`LlamoProcessor` as flat, PyG-style tensors (see `GRAPH_INPUT_NAMES`).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple


try:  # inside `try` so transformers' remote-code import check passes on the plain-module fallback below
    with warnings.catch_warnings():  # torch_geometric scripts helpers with torch.jit at import, deprecated in newer torch
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* deprecated", category=FutureWarning)
        from torch_geometric.nn import BatchNorm, GINEConv
except ImportError as error:
    raise ImportError("LLaMo's graph encoder needs torch_geometric: `pip install torch-geometric`.") from error

try:  # loaded as remote code (a package next to the weights)
    from .configuration_llamo import (
        GRAPH_INPUT_NAMES,
        GRAPH_INPUTS,
        GraphInput,
        LlamoConfig,
        num_molecules,
        set_text_config_transforms,
    )
except ImportError:  # imported as a plain module from the repository root
    from configuration_llamo import (
        GRAPH_INPUT_NAMES,
        GRAPH_INPUTS,
        GraphInput,
        LlamoConfig,
        num_molecules,
        set_text_config_transforms,
    )


try:  # loaded as remote code (a package next to the weights)
    from .projectors_llamo import LlamoGraphOutput, LlamoProjector, build_projector
except ImportError:  # imported as a plain module from the repository root
    from projectors_llamo import LlamoGraphOutput, LlamoProjector, build_projector


try:  # a relative import, so that save_pretrained copies the pipeline file next to the weights (config.custom_pipelines)
    from .pipeline_llamo import LlamoPipeline  # noqa: F401
except ImportError:  # imported as a plain module from the repository root
    from pipeline_llamo import LlamoPipeline  # noqa: F401


logger = logging.get_logger(__name__)

# transformers 5.24 renamed the KV-cache argument `past_key_values` to `cache` (generate, the base models and
# `prepare_inputs_for_generation`); the floor, 5.20, still uses the old name. LLaMo accepts both and hands the
# cache on under the name this transformers uses, so a given cache is never dropped silently.
CACHE_ARGUMENT = (
    "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else "past_key_values"
)


def deprecate_old_cache_name(forward):
    """Where transformers names the cache `cache`, `past_key_values=` warns and is renamed, as in its own models."""
    if CACHE_ARGUMENT == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)
    return forward


@dataclass
class LlamoModelOutputWithPast(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus `graph_outputs` (a `LlamoGraphOutput`, when graph inputs were given)."""

    graph_outputs: LlamoGraphOutput | None = None


@dataclass
class LlamoCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus `graph_outputs` (a `LlamoGraphOutput`, when graph inputs were given)."""

    graph_outputs: LlamoGraphOutput | None = None


def with_language_model_extras(output: ModelOutput, language_model_outputs: ModelOutput) -> ModelOutput:
    """Add to `output` every field the language model returned that `output` does not declare (MoE `router_logits`,
    `aux_loss`, ...): the wrapper passes them through instead of dropping them or failing on them."""
    for key, value in language_model_outputs.items():
        if key not in output and value is not None:
            output[key] = value
    return output


# (in_features, out_features, bias) of each language model's head, by config: built once per process
_HEAD_LAYOUTS: dict[str, tuple[int, int, bool]] = {}


def language_model_head_layout(text_config) -> tuple[int, int, bool]:
    """(in_features, out_features, bias) of the LLM's own causal-LM head, read from its class built on the meta
    device (no memory): e.g. OPT-350m's head reads `word_embed_proj_dim`, Phi's has a bias."""
    key = text_config.to_json_string(use_diff=False)
    if key not in _HEAD_LAYOUTS:
        with torch.device("meta"):
            head = AutoModelForCausalLM.from_config(type(text_config).from_dict(text_config.to_dict())).get_output_embeddings()
        _HEAD_LAYOUTS[key] = (head.in_features, head.out_features, head.bias is not None)
    return _HEAD_LAYOUTS[key]


def apply_head_semantics(logits: torch.Tensor, text_config) -> torch.Tensor:
    """What the LLM's causal-LM class does to its head's output, as `TEXT_CONFIG_TRANSFORMS` says, read from its config
    the way TRL's fused loss reads it (so training and inference agree): the first logit scale set (Cohere
    `logit_scale`, `output_multiplier`, Falcon-H1 `lm_head_multiplier`, Granite `1 / logits_scaling`), then Gemma-2's
    `final_logit_softcapping`. The config is read afresh on each call (every decoding step), with no tensor work
    when it sets no transform."""
    scale = softcap = None
    for transform, value in set_text_config_transforms(text_config).items():
        if transform.effect in ("scale", "inverse_scale") and scale is None:
            multiplies = transform.effect == "scale" or text_config.model_type == "hyperclovax"
            scale = value if multiplies else 1 / value
        elif transform.effect == "softcap":
            softcap = value
    if scale is not None and scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


class LlamoCategoricalEmbedding(nn.Module):
    """Sum of one embedding per categorical feature column (OGB's AtomEncoder / BondEncoder)."""

    def __init__(self, vocab_sizes: list[int], hidden_size: int):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(size, hidden_size) for size in vocab_sizes)

    def forward(self, features: torch.LongTensor) -> torch.Tensor:
        return sum(embedding(features[:, column]) for column, embedding in enumerate(self.embeddings))


def gathered_for_initialization(module: nn.Module) -> contextlib.AbstractContextManager:
    """Context in which `module`'s parameters partitioned by DeepSpeed ZeRO-3 (`zero.Init`) are whole and can be
    re-initialized (rank 0's values are kept); a no-op otherwise."""
    partitioned = [parameter for parameter in module.parameters() if hasattr(parameter, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    try:
        import deepspeed
    except ImportError as error:  # parameters with `ds_id` only exist when DeepSpeed is installed
        raise RuntimeError("partitioned parameters without DeepSpeed") from error
    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0)


class LlamoGINLayer(nn.Module):
    """GINE layer of LLaMo's GIN: h' = BN(MLP((1 + eps) h + sum_j ReLU(h_j + BondEmb(e_ij)))), own bond embedding."""

    def __init__(self, config: LlamoConfig):
        super().__init__()
        hidden = config.gnn_hidden_size
        self.bond_embedding = LlamoCategoricalEmbedding(config.bond_feature_vocab_sizes, hidden)
        mlp = nn.Sequential(
            nn.Linear(hidden, 2 * hidden),
            BatchNorm(2 * hidden, allow_single_element=True),
            nn.ReLU(),
            nn.Linear(2 * hidden, hidden),
        )
        # PyG's GINEConv re-initializes `mlp` in its constructor; under DeepSpeed ZeRO-3's `zero.Init` its parameters
        # are already partitioned (empty) by then, so they are gathered for it.
        with gathered_for_initialization(mlp):
            self.conv = GINEConv(mlp, train_eps=True)
        # A batch holding a single atom (one water molecule) uses the running statistics instead of failing.
        self.batch_norm = BatchNorm(hidden, allow_single_element=True)
        self.dropout = nn.Dropout(config.gnn_dropout)

    def forward(
        self, hidden_states: torch.Tensor, edge_index: torch.LongTensor, edge_features: torch.LongTensor, activate: bool
    ) -> torch.Tensor:
        hidden_states = self.batch_norm(self.conv(hidden_states, edge_index, self.bond_embedding(edge_features)))
        if activate:
            hidden_states = F.relu(hidden_states)
        return self.dropout(hidden_states)


class LlamoGraphEncoder(nn.Module):
    """GIN over OGB-featurized molecules, returning every level: the atom embeddings and each layer's output."""

    # fp32 island (see `keep_fp32_islands`): BatchNorm statistics and sums over atoms lose too much in bf16.
    _keep_in_fp32 = ("",)
    # Kept out of quantization (see `unquantized_names`): its linear layers, in the GIN layers' MLPs.
    _keep_unquantized = ("layers",)

    def __init__(self, config: LlamoConfig):
        super().__init__()
        self.atom_embedding = LlamoCategoricalEmbedding(config.atom_feature_vocab_sizes, config.gnn_hidden_size)
        self.layers = nn.ModuleList(LlamoGINLayer(config) for _ in range(config.gnn_num_layers))

    def forward(
        self, node_features: torch.LongTensor, edge_index: torch.LongTensor, edge_features: torch.LongTensor
    ) -> tuple[torch.Tensor, ...]:
        self._align_buffers_with_parameters()
        # The GIN computes in its own parameters' dtype (fp32 unless an engine cast it), not in autocast's bf16.
        with torch.autocast(device_type=node_features.device.type, enabled=False):
            hidden_states = self.atom_embedding(node_features)
            levels = [hidden_states]
            for index, layer in enumerate(self.layers):
                hidden_states = layer(hidden_states, edge_index, edge_features, activate=index < len(self.layers) - 1)
                levels.append(hidden_states)
        return tuple(levels)

    def _align_buffers_with_parameters(self) -> None:
        """DeepSpeed's bf16 mode casts the parameters of the whole model, fp32 islands included, but not the BatchNorm
        statistics (a dtype mismatch error at the first forward). The GIN then computes in bf16 throughout."""
        dtype = self.atom_embedding.embeddings[0].weight.dtype
        for buffer in self.buffers():
            if buffer.is_floating_point() and buffer.dtype != dtype:
                buffer.data = buffer.data.to(dtype)


def declared_names(model: nn.Module, declaration: str) -> list[str]:
    """Qualified names in `model` of the submodules that module classes declare in their `declaration` attribute
    (names relative to the declaring module, "" for the module itself)."""
    names = []
    for prefix, module in model.named_modules():
        for name in getattr(type(module), declaration, ()):
            names.append(".".join(part for part in (prefix, name) if part))
    return names


def fp32_island_names(model: nn.Module) -> list[str]:
    """Qualified names of the submodules whose classes declare them fp32 (`_keep_in_fp32`): the model's
    `_keep_in_fp32_modules_strict`, fp32 whether loaded in bf16 or fp16."""
    return declared_names(model, "_keep_in_fp32")


def unquantized_names(model: nn.Module) -> list[str]:
    """Qualified names of the submodules that quantized loading leaves alone (`_keep_unquantized`): the model's
    `_keep_in_fp32_modules`, which transformers' quantizers skip (bitsandbytes 4/8-bit, QLoRA) and an fp16 load
    keeps in fp32. The GIN's embeddings and BatchNorm and the small projector (trained in both stages) would lose
    too much, and their inputs are no int8/4-bit activations.

    The GIN is already in the strict list whole, and transformers wants no module in both lists (its common test
    fails on one); but its quantizers skip only this list, so the GIN declares the part of it they would convert:
    its layers, which hold all its linear layers."""
    return declared_names(model, "_keep_unquantized")


def keep_fp32_islands(model: nn.Module) -> None:
    """Cast the declared fp32 islands (parameters and floating buffers) to fp32, whatever dtype they were built in.

    `from_pretrained(dtype=torch.bfloat16)` and `dtype="auto"` build every module under a bf16 default dtype, and
    `_keep_in_fp32_modules_strict` only applies to weights found in the checkpoint: without this, a GIN created
    fresh around a bf16 LLM (stage 1) would be bf16. Parameters partitioned by DeepSpeed ZeRO-3 (`ds_id`) are left
    to DeepSpeed, which keeps one dtype for the whole model (see `LlamoGraphEncoder.forward`).
    """
    for name in fp32_island_names(model):
        module = model.get_submodule(name)
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.is_floating_point() and tensor.dtype != torch.float32 and not hasattr(tensor, "ds_id"):
                tensor.data = tensor.data.float()


def select_graph_molecules(graph_inputs: dict[str, torch.Tensor], molecule_index: torch.LongTensor) -> dict[str, torch.Tensor]:
    """Graph inputs of the molecules `molecule_index` (in that order, repeats allowed), re-indexed from 0.

    Expects nodes, edges and motifs grouped molecule by molecule, as `LlamoProcessor` produces them. Every tensor of
    `GRAPH_INPUTS` that is present is selected by its element (node / edge / motif) and kind.
    """
    node_batch = graph_inputs["graph_node_batch"]
    molecules = num_molecules(node_batch)
    # The molecule of each element, per element set (motifs only when given).
    element_batch = {"node": node_batch, "edge": node_batch[graph_inputs["graph_edge_index"][0]]}
    if graph_inputs.get("graph_motif_batch") is not None:
        element_batch["motif"] = graph_inputs["graph_motif_batch"]

    def gather(batch: torch.LongTensor) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Positions of the selected molecules' elements and their new molecule ids."""
        counts = torch.bincount(batch, minlength=molecules)
        start = counts.cumsum(0) - counts
        new_counts = counts[molecule_index]
        new_batch = torch.repeat_interleave(torch.arange(len(molecule_index), device=batch.device), new_counts)
        new_start = new_counts.cumsum(0) - new_counts
        within = torch.arange(int(new_counts.sum()), device=batch.device) - new_start[new_batch]
        return start[molecule_index][new_batch] + within, new_batch

    gathered = {element: gather(batch) for element, batch in element_batch.items()}
    node_counts = torch.bincount(node_batch, minlength=molecules)
    old_node_start = node_counts.cumsum(0) - node_counts
    new_node_counts = node_counts[molecule_index]
    new_node_start = new_node_counts.cumsum(0) - new_node_counts
    new_edge_batch = gathered["edge"][1]
    # Edge indices move with their molecule's first node.
    shift = new_node_start[new_edge_batch] - old_node_start[molecule_index][new_edge_batch]
    selected = {}
    for spec in GRAPH_INPUTS:
        if spec.element not in gathered or graph_inputs.get(spec.name) is None:
            continue
        source, new_batch = gathered[spec.element]
        if spec.kind == "batch":
            selected[spec.name] = new_batch
        elif spec.kind == "edge_index":
            selected[spec.name] = graph_inputs[spec.name][:, source] + shift
        else:
            selected[spec.name] = graph_inputs[spec.name][source]
    return selected


_BUILD_INPUTS_HINT = (
    "Build the inputs with LlamoProcessor -- processor(text=..., smiles=...) or processor.apply_chat_template(messages, "
    "tokenize=True, return_dict=True, return_tensors='pt') -- and pass all of them: model(**inputs) / model.generate(**inputs)."
)
# How `check_graph_inputs` words the `GRAPH_INPUTS` schema: each element's count, each kind's shape, each dtype.
_ELEMENT_COUNTS = {"node": "num_atoms", "edge": "num_edges", "motif": "num_motifs"}
_KIND_SHAPES = {"features": "({count}, {width})", "edge_index": "(2, {count})", "batch": "({count},)"}
_DTYPE_NAMES = {"int64": "torch.long (int64)", "float32": "a float tensor"}
# Integer features: each column an id in a vocabulary, whose sizes the config field `width` lists (atoms, bonds).
_VOCABULARY_INPUTS = tuple(spec for spec in GRAPH_INPUTS if spec.kind == "features" and spec.dtype == "int64")


def _has_schema_dtype(spec: GraphInput, tensor: torch.Tensor) -> bool:
    """Integer inputs (indices, vocabulary ids) must be int64 exactly; float features may be any floating dtype (the
    projector casts them to its own)."""
    return tensor.dtype == torch.long if spec.dtype == "int64" else tensor.is_floating_point()


def _expected_shape(spec: GraphInput, tensor: torch.Tensor, count: int, config: LlamoConfig) -> tuple[int, ...]:
    """`spec.shape(config)` with `count` elements. The width of optional features (motifs, which a model without
    motif queries ignores) is not checked: whatever they have."""
    shape = (-1, *tensor.shape[-1:]) if spec.kind == "features" and not spec.required else spec.shape(config)
    return tuple(count if size == -1 else size for size in shape)


def check_graph_inputs(
    config: LlamoConfig, input_ids: torch.LongTensor | None, graph_inputs: dict[str, torch.Tensor | None], prefill: bool = True
) -> None:
    """Raise a `ValueError` naming the problem when graph inputs are inconsistent, instead of a raw IndexError, a
    device-side assert, silently mixed molecules or non-finite logits.

    Cheap structural checks (presence, dtypes, shapes; by the `GRAPH_INPUTS` schema) always run. The value checks
    (sorted molecule index, index ranges, finite motif features, slots without graph inputs) read tensor values back
    to the host, so they are skipped while `torch.compile` traces (`torch.compiler.is_compiling()`), where a host
    sync would break the graph.
    `prefill`: the step sees the whole prompt (no cached keys yet); later decoding steps carry no graph inputs.
    """
    given = {name: value for name, value in graph_inputs.items() if value is not None}
    compiling = torch.compiler.is_compiling()
    if not given:
        if prefill and not compiling and input_ids is not None and config.uses_graph:
            num_slots = int((input_ids == config.graph_token_id).sum())
            if num_slots:
                raise ValueError(
                    f"input_ids hold {num_slots} graph-token slots (id {config.graph_token_id}) but no graph inputs were "
                    f"given, so the slots would be read as plain tokens. {_BUILD_INPUTS_HINT}"
                )
        return
    if not config.uses_graph:
        return  # a text-only model ignores graph inputs
    _check_graph_input_structure(config, given)
    if not compiling:
        _check_graph_input_values(config, given)


def _check_graph_input_structure(config: LlamoConfig, given: dict[str, torch.Tensor]) -> None:
    """Presence, dtypes and shapes of the given graph inputs (no host sync)."""
    missing = [spec.name for spec in GRAPH_INPUTS if spec.required and spec.name not in given]
    if "graph_motif_features" in given and "graph_motif_batch" not in given and config.uses_motifs:
        missing.append("graph_motif_batch")  # a motif-reading projector needs the molecule of each motif
    if missing:
        raise ValueError(f"incomplete graph inputs: {', '.join(missing)} missing. {_BUILD_INPUTS_HINT}")
    present = [(spec, given[spec.name]) for spec in GRAPH_INPUTS if spec.name in given]
    for spec, tensor in present:
        if not _has_schema_dtype(spec, tensor):
            raise ValueError(f"{spec.name} must be {_DTYPE_NAMES[spec.dtype]}, got {tensor.dtype}. {_BUILD_INPUTS_HINT}")
    counts = {}  # elements counted by their features or edge_index, the first input of each in `GRAPH_INPUTS`
    for spec, tensor in present:
        if spec.element not in counts:
            if spec.kind == "batch":
                continue  # a motif batch without motif features: no motif count to check it against
            axis = -1 if spec.kind == "edge_index" else 0  # edge_index: one column per edge
            counts[spec.element] = tensor.shape[axis] if tensor.dim() else 0
        expected = _expected_shape(spec, tensor, counts[spec.element], config)
        if tuple(tensor.shape) != expected:
            width = expected[-1] if spec.required else "any width"
            symbolic = _KIND_SHAPES[spec.kind].format(count=_ELEMENT_COUNTS[spec.element], width=width)
            raise ValueError(f"{spec.name} has shape {tuple(tensor.shape)}, expected {symbolic} = {expected}")
    if counts["node"] == 0:
        raise ValueError(f"graph inputs with zero atoms: every molecule needs at least one atom. {_BUILD_INPUTS_HINT}")


def _check_graph_input_values(config: LlamoConfig, given: dict[str, torch.Tensor]) -> None:
    """The checks that read tensor values (host syncs): molecule indices, vocabulary ids, edge ends, finite features."""
    node_batch = given["graph_node_batch"]
    steps = node_batch[1:] - node_batch[:-1]
    if int(node_batch[0]) != 0 or bool(((steps != 0) & (steps != 1)).any()):
        raise ValueError(
            "graph_node_batch must number the molecules 0, 1, 2, ... with each molecule's atoms contiguous and in "
            f"order (got {node_batch[:12].tolist()}...): an interleaved index would mix molecules"
        )
    for spec in _VOCABULARY_INPUTS:
        tensor, vocab_sizes = given[spec.name], getattr(config, spec.width)
        if tensor.numel():
            bad = ((tensor < 0) | (tensor >= torch.tensor(list(vocab_sizes), device=tensor.device))).any(0)
            if bool(bad.any()):
                column = int(bad.nonzero()[0])
                raise ValueError(
                    f"{spec.name}[:, {column}] holds {int(tensor[:, column].min())}..{int(tensor[:, column].max())}, "
                    f"outside the feature's vocabulary 0..{vocab_sizes[column] - 1}"
                )
    edge_index, num_atoms = given["graph_edge_index"], node_batch.shape[0]
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_atoms):
        raise ValueError(
            f"graph_edge_index must index the {num_atoms} atoms, got values {int(edge_index.min())}..{int(edge_index.max())}"
        )
    motif_features, motif_batch = given.get("graph_motif_features"), given.get("graph_motif_batch")
    if motif_features is None:
        return
    if motif_batch is not None and motif_batch.numel():
        molecules = num_molecules(node_batch)
        out_of_range = int(motif_batch.min()) < 0 or int(motif_batch.max()) >= molecules
        if out_of_range or bool((motif_batch[1:] < motif_batch[:-1]).any()):
            raise ValueError(
                f"graph_motif_batch must be sorted molecule indices below {molecules}, got {motif_batch[:12].tolist()}..."
            )
    if not bool(torch.isfinite(motif_features).all()):
        raise ValueError("graph_motif_features hold NaN or infinite values")


def _is_prefill(past_key_values) -> bool:
    """Whether a forward step sees the whole prompt: no cache, or an empty one."""
    if past_key_values is None:
        return True
    get_seq_length = getattr(past_key_values, "get_seq_length", None)
    return get_seq_length is not None and not torch.compiler.is_compiling() and int(get_seq_length()) == 0


class LlamoPreTrainedModel(PreTrainedModel):
    config: LlamoConfig
    config_class = LlamoConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # Decoding steps (text tokens only, graph inputs already consumed at prefill) trace without graph breaks, so
    # static cache + `torch.compile(fullgraph=True)` works; the prefill with graph inputs runs eagerly in `generate`.
    _can_compile_fullgraph = True
    # `_keep_in_fp32_modules_strict`: the GIN (BatchNorm statistics) and the projector's LayerNorm stay in fp32 when
    # loading in bf16 / fp16. `_keep_in_fp32_modules`: quantized loading converts only the language model. The
    # modules declare both themselves (`_keep_in_fp32`, `_keep_unquantized`) and each model names them as it holds
    # them, in `__init__` (`fp32_island_names`, `unquantized_names`): `graph_encoder` in LlamoModel, `model.graph_encoder`
    # in LlamoForConditionalGeneration, whose `post_init` adds LlamoModel's names too (as transformers collects a
    # child's lists; quantizers match a name from its start or as a suffix, the loading dtype plan anywhere).

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear, Embedding, MultiheadAttention, BatchNorm, LayerNorm
        if isinstance(module, LlamoProjector):
            module.init_projector_weights(self.config)  # the learned queries: each projector knows its own
        elif isinstance(module, GINEConv) and isinstance(module.eps, nn.Parameter):
            init.zeros_(module.eps)


class LlamoModel(LlamoPreTrainedModel):
    """LLaMo without a language-modeling head: graph encoder, graph projector and the language model's base."""

    def __init__(self, config: LlamoConfig):
        super().__init__(config)
        # The language model is registered first: `model.dtype` (saved as the checkpoint's dtype) is that of the
        # first parameter, and the GIN stays fp32 in a bf16 model.
        self.language_model = AutoModel.from_config(config.text_config)
        self.graph_encoder = LlamoGraphEncoder(config) if config.uses_graph else None
        self.projector = build_projector(config)
        # Loading keeps checkpoint weights of the fp32 islands in fp32 (dtype plan); new ones are cast here.
        self._keep_in_fp32_modules_strict = fp32_island_names(self)
        self._keep_in_fp32_modules = unquantized_names(self)
        keep_fp32_islands(self)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def train(self, mode: bool = True):
        super().train(mode)
        # A frozen graph encoder (stage 2) stays in eval mode, so BatchNorm keeps its running statistics.
        if self.graph_encoder is not None and not any(p.requires_grad for p in self.graph_encoder.parameters()):
            self.graph_encoder.eval()
        return self

    def get_graph_features(
        self,
        graph_node_features: torch.LongTensor,
        graph_edge_index: torch.LongTensor,
        graph_edge_features: torch.LongTensor,
        graph_node_batch: torch.LongTensor,
        graph_motif_features: torch.FloatTensor | None = None,
        graph_motif_batch: torch.LongTensor | None = None,
        output_attentions: bool = False,
    ) -> LlamoGraphOutput:
        """Encode a batch of molecules and project them to graph tokens (`graph_features`: slot order, LLM width)."""
        if self.projector is None:
            raise ValueError("this LLaMo model has projector_type='none': it reads SMILES text only, not graphs")
        levels = self.graph_encoder(graph_node_features, graph_edge_index, graph_edge_features)
        return self.projector(
            levels, graph_node_batch, num_molecules(graph_node_batch), graph_motif_features, graph_motif_batch, output_attentions
        )

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, graph_features: torch.Tensor
    ) -> torch.BoolTensor:
        """Mask [batch, seq, 1] of the graph-token slots; raises if their number differs from the graph vectors'."""
        if input_ids is None:
            graph_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.graph_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            slot_mask = (inputs_embeds == graph_embedding).all(-1)
        else:
            slot_mask = input_ids == self.config.graph_token_id
        num_slots, num_vectors = int(slot_mask.sum()), graph_features.shape[0]
        if num_slots != num_vectors:
            raise ValueError(
                f"Graph features and graph tokens do not match: the input has {num_slots} graph-token slots "
                f"(id {self.config.graph_token_id}) but the molecules gave {num_vectors} graph vectors. Build the inputs "
                "with LlamoProcessor, and do not truncate prompts inside their graph tokens."
            )
        return slot_mask.unsqueeze(-1)

    @can_return_tuple
    @deprecate_old_cache_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        graph_node_features: torch.LongTensor | None = None,
        graph_edge_index: torch.LongTensor | None = None,
        graph_edge_features: torch.LongTensor | None = None,
        graph_node_batch: torch.LongTensor | None = None,
        graph_motif_features: torch.FloatTensor | None = None,
        graph_motif_batch: torch.LongTensor | None = None,
        output_projector_attentions: bool = False,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | LlamoModelOutputWithPast:
        r"""
        graph_node_features (`torch.LongTensor` of shape `(num_atoms, len(config.atom_feature_vocab_sizes))`): OGB
            atom features of all molecules.
        graph_edge_index (`torch.LongTensor` of shape `(2, num_edges)`): directed bonds, as indices into the atoms.
        graph_edge_features (`torch.LongTensor` of shape `(num_edges, len(config.bond_feature_vocab_sizes))`): OGB
            bond features.
        graph_node_batch (`torch.LongTensor` of shape `(num_atoms,)`): molecule index of each atom.
        graph_motif_features (`torch.FloatTensor` of shape `(num_motifs, config.motif_feature_size)`): functional-group
            descriptors.
        graph_motif_batch (`torch.LongTensor` of shape `(num_motifs,)`): molecule index of each motif.
        output_projector_attentions (`bool`): also return the projector's cross-attention weights.
        cache / past_key_values (`Cache`): the language model's KV cache (`past_key_values` is the name transformers
            < 5.24 uses; either is accepted).

        Molecules are matched to the `<graph>` slots in order: the first molecule fills the first run of slots.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        check_graph_inputs(self.config, input_ids, {
            "graph_node_features": graph_node_features, "graph_edge_index": graph_edge_index,
            "graph_edge_features": graph_edge_features, "graph_node_batch": graph_node_batch,
            "graph_motif_features": graph_motif_features, "graph_motif_batch": graph_motif_batch,
        }, prefill=_is_prefill(cache if cache is not None else past_key_values))  # fmt: skip
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        graph_outputs = None
        if graph_node_features is not None and self.projector is not None:
            graph_outputs = self.get_graph_features(
                graph_node_features,
                graph_edge_index,
                graph_edge_features,
                graph_node_batch,
                graph_motif_features,
                graph_motif_batch,
                output_attentions=output_projector_attentions,
            )
            graph_features = graph_outputs.graph_features.to(inputs_embeds.device, inputs_embeds.dtype)
            slot_mask = self.get_placeholder_mask(input_ids, inputs_embeds, graph_features)
            inputs_embeds = inputs_embeds.masked_scatter(slot_mask, graph_features)

        cache = cache if cache is not None else past_key_values
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **{CACHE_ARGUMENT: cache},
            **kwargs,
        )
        declared = {key: value for key, value in outputs.items() if key in LlamoModelOutputWithPast.__dataclass_fields__}
        return with_language_model_extras(LlamoModelOutputWithPast(**declared, graph_outputs=graph_outputs), outputs)


class LlamoForConditionalGeneration(LlamoPreTrainedModel, GenerationMixin):
    """LLaMo: answers instructions about molecules given as graphs (and SMILES text)."""

    # Tensor parallelism: the language model's own plan covers its layers (`text_config.base_model_tp_plan`).
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: LlamoConfig):
        super().__init__(config)
        self.model = LlamoModel(config)
        # The LLM's own head layout: its width (OPT-350m projects to word_embed_proj_dim first) and bias (Phi).
        in_features, out_features, bias = language_model_head_layout(config.text_config)
        self.lm_head = nn.Linear(in_features, out_features, bias=bias)
        # Tie target (used when tie_word_embeddings): wherever this language model keeps its input embeddings,
        # e.g. `embed_tokens` for Llama / Qwen, `decoder.embed_tokens` for OPT.
        embeddings = self.model.get_input_embeddings()
        path = next(name for name, module in self.model.language_model.named_modules() if module is embeddings)
        self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{path}.weight"}
        self._keep_in_fp32_modules_strict = fp32_island_names(self)
        self._keep_in_fp32_modules = unquantized_names(self)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_graph_features(self, **graph_inputs) -> LlamoGraphOutput:
        return self.model.get_graph_features(**graph_inputs)

    @can_return_tuple
    @deprecate_old_cache_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        graph_node_features: torch.LongTensor | None = None,
        graph_edge_index: torch.LongTensor | None = None,
        graph_edge_features: torch.LongTensor | None = None,
        graph_node_batch: torch.LongTensor | None = None,
        graph_motif_features: torch.FloatTensor | None = None,
        graph_motif_batch: torch.LongTensor | None = None,
        output_projector_attentions: bool = False,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | LlamoCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets (-100 = ignored). Graph-token slots are never supervised, whatever their label.
        Graph inputs: see `LlamoModel.forward`.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            graph_node_features=graph_node_features,
            graph_edge_index=graph_edge_index,
            graph_edge_features=graph_edge_features,
            graph_node_batch=graph_node_batch,
            graph_motif_features=graph_motif_features,
            graph_motif_batch=graph_motif_batch,
            output_projector_attentions=output_projector_attentions,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = apply_head_semantics(self.lm_head(hidden_states[:, keep, :]), self.config.text_config)

        loss = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.graph_token_id, -100)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)

        aux_loss = None
        # Cached decoding steps route only the new tokens while the mask covers the whole sequence: the
        # load-balancing loss (a training quantity) is computed when the mask matches this call's tokens.
        mask_fits = attention_mask is None or attention_mask.dim() != 2 or attention_mask.shape[1] == hidden_states.shape[1]
        if outputs.get("router_logits") is not None and mask_fits:
            aux_loss = self._router_aux_loss(outputs.router_logits, attention_mask)
            if loss is not None:
                loss = loss + getattr(self.config.text_config, "router_aux_loss_coef", 0.0) * aux_loss.to(loss.device)

        # Everything but the last hidden state carries over (the cache field is `cache` or `past_key_values`
        # depending on the transformers release), MoE router logits included.
        declared = LlamoCausalLMOutputWithPast.__dataclass_fields__
        carried = {key: value for key, value in outputs.items() if key != "last_hidden_state" and key in declared}
        output = LlamoCausalLMOutputWithPast(loss=loss, logits=logits, **carried)
        if aux_loss is not None:
            output["aux_loss"] = aux_loss
        return with_language_model_extras(output, outputs)

    def _router_aux_loss(self, router_logits: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None) -> torch.Tensor:
        """MoE load-balancing loss, computed by the language model's own module function (as its causal-LM class)."""
        # the language model's own modeling module (`__import__`: remote-code files import a fixed set of packages)
        module = __import__(type(self.model.language_model).__module__, fromlist=["load_balancing_loss_func"])
        if not hasattr(module, "load_balancing_loss_func"):
            raise ValueError(
                f"{type(self.model.language_model).__name__} returns router logits but its module has no "
                "load_balancing_loss_func: LLaMo does not know this MoE family's auxiliary loss"
            )
        text_config = self.config.text_config
        num_experts = getattr(text_config, "num_local_experts", None) or text_config.num_experts
        return module.load_balancing_loss_func(router_logits, num_experts, text_config.num_experts_per_tok, attention_mask)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        use_cache: bool = True,
        **kwargs,
    ) -> dict:
        """The base method's inputs, plus the graph inputs while the fed tokens still hold their `<graph>` slots.

        The named parameters are those `generate` inspects (a cache given by the caller, `inputs_embeds`); the
        graph inputs travel in `kwargs`. With a KV cache the graph vectors are computed once, when their slots are
        fed, whatever the cache type (dynamic, static, an assistant's cache reused across rounds).
        """
        # transformers < 5.24 keeps its own cache under the old name, next to a `cache=` the caller gave
        old_name_cache = kwargs.pop("past_key_values", None)
        cache = cache if cache is not None else old_name_cache
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            use_cache=use_cache,
            **{CACHE_ARGUMENT: cache},
            **kwargs,
        )
        fed_ids = model_inputs.get("input_ids")
        # Once the cache holds tokens, the graph vectors are in it: later decoding steps, and a first iteration that
        # feeds only a slot-free tail (an assistant's later drafting rounds), go without graph inputs. An empty cache
        # means the slots are still to be fed (an assistant's first round runs with `is_first_iteration=False`).
        cached = cache is not None and cache.get_seq_length() > 0
        if cached and (
            (use_cache and not is_first_iteration)
            or (fed_ids is not None and not bool((fed_ids == self.config.graph_token_id).any()))
        ):
            for name in GRAPH_INPUT_NAMES:
                model_inputs.pop(name, None)
        elif model_inputs.get("graph_node_batch") is not None and fed_ids is not None:
            # Chunked prefill (`prefill_chunk_size`) feeds the prompt in pieces, each with all the graph inputs.
            node_batch = model_inputs["graph_node_batch"]
            tokens_per_molecule = self.config.num_graph_tokens
            needed = node_batch.numel() if tokens_per_molecule is None else num_molecules(node_batch) * tokens_per_molecule
            if int((fed_ids == self.config.graph_token_id).sum()) < needed:
                raise ValueError(
                    f"this forward call feeds only part of the molecules' {needed} graph-token slots (chunked prefill, "
                    "or a given cache that ends inside the slots): generate with `prefill_chunk_size=None`, or cache "
                    "whole molecules"
                )
        return model_inputs

    def _get_candidate_generator(self, *args, **kwargs):
        """Assisted decoding: a text-only assistant (any causal LM sharing the tokenizer) drafts without the graph
        inputs, which its `generate` would reject; a LLaMo assistant keeps them."""
        generator = super()._get_candidate_generator(*args, **kwargs)
        assistant, assistant_kwargs = getattr(generator, "assistant_model", None), getattr(generator, "assistant_kwargs", None)
        if assistant is not None and assistant_kwargs is not None:
            accepted = inspect.signature(assistant.forward).parameters
            for name in GRAPH_INPUT_NAMES:
                if name not in accepted:
                    assistant_kwargs.pop(name, None)
        return generator

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs
    ):
        """Beam search / several return sequences: repeat each sample's molecules along with the sample."""
        graph_inputs = {name: model_kwargs.pop(name) for name in GRAPH_INPUT_NAMES if model_kwargs.get(name) is not None}
        if graph_inputs and expand_size > 1:
            if input_ids is None:
                raise ValueError("expanding graph inputs for beam search / num_return_sequences needs `input_ids`")
            molecule_sample = self._molecule_sample_index(input_ids, graph_inputs["graph_node_batch"])
            copies = torch.arange(expand_size, device=molecule_sample.device)
            molecules = torch.arange(len(molecule_sample), device=molecule_sample.device)
            # order: sample by sample, each sample's molecules repeated `expand_size` times (repeat_interleave)
            order_key = (molecule_sample[None, :] * expand_size + copies[:, None]) * len(molecules) + molecules[None, :]
            molecule_order = molecules.repeat(expand_size)[order_key.flatten().argsort()]
            graph_inputs = select_graph_molecules(graph_inputs, molecule_order)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        model_kwargs.update(graph_inputs)
        return input_ids, model_kwargs

    def _molecule_sample_index(self, input_ids: torch.LongTensor, node_batch: torch.LongTensor) -> torch.LongTensor:
        """Sample (row of `input_ids`) that each molecule's graph-token slots sit in."""
        molecules = num_molecules(node_batch)
        tokens_per_molecule = self.config.num_graph_tokens
        if tokens_per_molecule is None:  # one token per atom
            slots = torch.bincount(node_batch, minlength=molecules)
        else:
            slots = torch.full((molecules,), tokens_per_molecule, device=input_ids.device)
        molecule_end = slots.cumsum(0)
        sample_end = (input_ids == self.config.graph_token_id).sum(dim=1).cumsum(0)
        return torch.searchsorted(sample_end, molecule_end.to(sample_end.device))


# save_pretrained then writes `auto_map` and copies these files next to the weights (trust_remote_code loading).
LlamoModel.register_for_auto_class("AutoModel")
LlamoForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "LlamoForConditionalGeneration",
    "LlamoModel",
    "LlamoPreTrainedModel",
    "check_graph_inputs",
    "select_graph_molecules",
]
