"""LLaMo model configuration."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING


try:  # loaded as remote code (a package next to the weights)
    from .projectors_llamo import PROJECTOR_SPECS, PROJECTOR_TYPES, ProjectorSpec
except ImportError:  # imported as a plain module from the repository root
    from projectors_llamo import PROJECTOR_SPECS, PROJECTOR_TYPES, ProjectorSpec


# Column vocabularies of the OGB molecule schema (= ogb.utils.features.get_{atom,bond}_feature_dims()) and the size
# of a functional-group descriptor: what `featurization_llamo` produces and the defaults of `LlamoConfig`.
ATOM_FEATURE_VOCAB_SIZES = (
    119,
    5,
    12,
    12,
    10,
    6,
    6,
    2,
    2,
)  # atomic number, chirality, degree, charge, #H, radicals, hybridization, aromatic, ring
BOND_FEATURE_VOCAB_SIZES = (5, 6, 2)  # bond type, stereo, conjugated
MOTIF_FEATURE_SIZE = 73


@dataclass(frozen=True)
class GraphInput:
    """One tensor of the graph inputs: the schema that the featurizer, the processor, the training collator and the
    model all derive their names, dtypes, shapes and batching from.

    Args:
        name: keyword of the tensor in `LlamoProcessor`'s output and the model's forward.
        dtype: `"int64"` or `"float32"` (a name numpy, torch and `datasets` all understand).
        element: `"node"`, `"edge"` or `"motif"`: the set the tensor runs over (one row per atom / directed bond /
            functional group; the columns of `edge_index`).
        kind: `"features"` (`[count, width]`), `"edge_index"` (`[2, num_edges]`, indices into the nodes) or `"batch"`
            (`[count]`, the molecule of each element).
        width: for `"features"`, the `LlamoConfig` field that sets the number of columns (its length for a list of
            vocabulary sizes).
    """

    name: str
    dtype: str
    element: str
    kind: str
    width: str | None = None

    def num_columns(self, config: PreTrainedConfig | None = None) -> int | None:
        """Columns of a `"features"` tensor under `config` (the OGB defaults without one); None for the others."""
        if self.width is None:
            return None
        value = getattr(config, self.width) if config is not None else _SCHEMA_DEFAULTS[self.width]
        return value if isinstance(value, int) else len(value)

    def shape(self, config: PreTrainedConfig | None = None) -> tuple[int, ...]:
        """Shape with -1 for the element count: `(-1, width)`, `(2, -1)` or `(-1,)` (what `reshape` takes)."""
        if self.kind == "features":
            return (-1, self.num_columns(config))
        return (2, -1) if self.kind == "edge_index" else (-1,)

    @property
    def required(self) -> bool:
        """Whether every set of graph inputs holds it: all but the motif inputs (`MOTIF_INPUT_NAMES`), which only the
        motif-reading projectors read."""
        return self.element != "motif"


_SCHEMA_DEFAULTS = {
    "atom_feature_vocab_sizes": ATOM_FEATURE_VOCAB_SIZES,
    "bond_feature_vocab_sizes": BOND_FEATURE_VOCAB_SIZES,
    "motif_feature_size": MOTIF_FEATURE_SIZE,
}

# Model inputs describing the molecules of a batch, as `LlamoProcessor` returns them (flat, PyG-style: a disjoint
# union of the molecules, kept molecule by molecule).
GRAPH_INPUTS = (
    GraphInput("graph_node_features", "int64", "node", "features", "atom_feature_vocab_sizes"),  # OGB atom features
    GraphInput("graph_edge_index", "int64", "edge", "edge_index"),  # directed bonds (both directions)
    GraphInput("graph_edge_features", "int64", "edge", "features", "bond_feature_vocab_sizes"),  # OGB bond features
    GraphInput("graph_node_batch", "int64", "node", "batch"),
    GraphInput("graph_motif_features", "float32", "motif", "features", "motif_feature_size"),  # functional groups
    GraphInput("graph_motif_batch", "int64", "motif", "batch"),
)
GRAPH_INPUT_NAMES = tuple(spec.name for spec in GRAPH_INPUTS)
# The inputs only the motif-reading projectors need (may be absent otherwise).
MOTIF_INPUT_NAMES = tuple(spec.name for spec in GRAPH_INPUTS if spec.element == "motif")


@dataclass(frozen=True)
class TextConfigTransform:
    """A field of the language model's config (`text_config`) by which its family transforms the input embeddings or
    the logits beyond its layers and the head's matrix product: the one table of them (`TEXT_CONFIG_TRANSFORMS`)
    says both what LLaMo's head applies (`modeling_llamo.apply_head_semantics`) and what the vLLM export refuses
    (`llamo.serving.export.check_servable`).

    Args:
        field: the config attribute.
        neutral: its value in a config that does not use the transform (the default it is read with); the export
            accepts only this value of the transforms it does not carry over.
        effect: what LLaMo does with a value that is set (not None):
            `"scale"`: the head multiplies the logits by it;
            `"inverse_scale"`: the head divides the logits by it (HyperCLOVA X multiplies by it);
            `"softcap"`: the head caps the scaled logits, `tanh(logits / value) * value`;
            `"embeddings"`: nothing at the head: the language model's own forward scales its input embeddings, graph
                vectors included, inside LLaMo;
            None: nothing: a logit transform LLaMo does not reproduce (its builder's logit-fidelity check fails on it).
            Of the scales, the first one set in table order is the one applied (as TRL's fused loss reads them).
        exportable: whether the vLLM export accepts a value other than `neutral`.
    """

    field: str
    neutral: float | None
    effect: str | None
    exportable: bool = False


TEXT_CONFIG_TRANSFORMS = (
    TextConfigTransform("logit_scale", None, "scale"),  # Cohere
    # Muse Glimmer / Falcon-H1: applied by the head; the export has never refused them (vLLM's side is unverified)
    TextConfigTransform("output_multiplier", None, "scale", exportable=True),
    TextConfigTransform("lm_head_multiplier", None, "scale", exportable=True),
    TextConfigTransform("logits_scaling", 1.0, "inverse_scale"),  # Granite, MiniCPM3, HyperCLOVA X
    TextConfigTransform("final_logit_softcapping", None, "softcap"),  # Gemma 2/3
    TextConfigTransform("embedding_multiplier", 1.0, "embeddings"),  # Granite, Falcon-H1, HyperCLOVA X
    TextConfigTransform("scale_emb", 1.0, "embeddings"),  # MiniCPM
    TextConfigTransform("mup_width_multiplier", None, None),  # Phi-3-small (remote code) divides its logits by it
)


def set_text_config_transforms(text_config) -> dict[TextConfigTransform, float]:
    """The transforms of `TEXT_CONFIG_TRANSFORMS` that `text_config` sets (value not None), in table order; read
    afresh on every call, so a config edited after the model was built counts."""
    return {t: value for t in TEXT_CONFIG_TRANSFORMS if (value := getattr(text_config, t.field, None)) is not None}


def num_molecules(graph_node_batch) -> int:
    """Molecules in a batch of graph inputs, from `graph_node_batch` (a tensor, array or list, grouped molecule by
    molecule: every molecule has at least one atom, so the last atom belongs to the last molecule)."""
    return int(graph_node_batch[-1]) + 1 if len(graph_node_batch) else 0


# Every saved LLaMo config maps the auto classes to the code files saved next to it (whichever class saved it).
AUTO_MAP = {
    "AutoConfig": "configuration_llamo.LlamoConfig",
    "AutoModel": "modeling_llamo.LlamoModel",
    "AutoModelForCausalLM": "modeling_llamo.LlamoForConditionalGeneration",
}

# ... and the `molecule-text-to-text` task to the pipeline saved next to it (pipeline_llamo.py), so that
# `pipeline(task, model=folder_or_hub_id, trust_remote_code=True)` finds it.
CUSTOM_PIPELINES = {
    "molecule-text-to-text": {"impl": "pipeline_llamo.LlamoPipeline", "pt": ["AutoModelForCausalLM"], "type": "multimodal"}
}


# projector_attention -> how the multi-level projector's learned queries attend the atoms
PROJECTOR_ATTENTIONS = (
    "released",  # LLaMo's code: plain cross-attention over the raw level states (exact for converted weights)
    "normed",  # each level LayerNormed first, queries scaled by a learned per-level factor (not collapsing)
)


class LlamoConfig(PreTrainedConfig):
    r"""
    Configuration of a LLaMo model: a GIN graph encoder, a graph projector and any causal language model.

    Defaults reproduce the released LLaMo (5-layer GIN of width 300, 4 queries per level and 4 motif queries,
    28 graph tokens, a 6-layer SiLU MLP into Llama-2's width); every size is a field, so a tiny CPU model
    and the 7B model are the same code.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the causal language model (default: a Llama config).
        gnn_num_layers (`int`, defaults to 5): GIN layers; the projector sees `gnn_num_layers + 1` levels.
        gnn_hidden_size (`int`, defaults to 300): width of the GIN and of the projector's attention.
        gnn_dropout (`float`, defaults to 0.0): dropout after each GIN layer.
        atom_feature_vocab_sizes / bond_feature_vocab_sizes (`list[int]`): sizes of the OGB categorical
            atom and bond feature columns (defaults: `ATOM_FEATURE_VOCAB_SIZES`, `BOND_FEATURE_VOCAB_SIZES`).
        projector_type (`str`, defaults to `"multilevel"`): one of `PROJECTOR_TYPES`.
        num_query_tokens_per_level (`int`, defaults to 4): learned queries per GNN level.
        num_motif_query_tokens (`int`, defaults to 4): learned queries over the functional-group motifs.
        projector_num_heads (`int`, defaults to 4): heads of the projector's cross-attention.
        motif_feature_size (`int`, defaults to 73): size of a motif descriptor.
        projector_mlp_depth (`int`, defaults to 6): linear layers of the MLP into the language model's width.
        projector_hidden_act (`str`, defaults to `"silu"`): activation between those layers.
        motif_tokens_first (`bool`, defaults to `True`): put the motif tokens before the level tokens (released
            code) instead of after them (paper, Eq. 5).
        share_level_cross_attention (`bool`, defaults to `True`): one cross-attention shared by all levels
            (released code) instead of one per level (paper).
        query_init_std (`float`, defaults to 1.0): std of the learned queries at init (`torch.randn` originally).
        projector_attention (`str`, defaults to `"released"`): how the multi-level projector's queries meet the atoms.
            `"released"` is LLaMo's computation (needed for converted weights). `"normed"` LayerNorms each level's
            atom states before the cross-attention and multiplies the queries by a learned per-level scale (initialized
            to sqrt(head dim)): the released keys are tiny (atom embeddings at std ~0.05, GIN levels at different
            scales), so its attention stays uniform and every query returns the same mean-pooled token.
        graph_size_token (`bool`, defaults to `False`): the multi-level projectors add one token made from the sum
            (not the mean) of the layer-normed last-level atom states, so the language model can see molecule size,
            which mean-like attention pooling and the per-token LayerNorm remove.
        graph_token_id (`int`, defaults to 32000): id of the `<graph>` slot token in the tokenizer.
        initializer_range (`float`, defaults to 0.02): std of the other weights at init.
    """

    model_type = "llamo"
    sub_configs = {"text_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    gnn_num_layers: int = 5
    gnn_hidden_size: int = 300
    gnn_dropout: float = 0.0
    atom_feature_vocab_sizes: list[int] | tuple[int, ...] = ATOM_FEATURE_VOCAB_SIZES
    bond_feature_vocab_sizes: list[int] | tuple[int, ...] = BOND_FEATURE_VOCAB_SIZES
    projector_type: str = "multilevel"
    num_query_tokens_per_level: int = 4
    num_motif_query_tokens: int = 4
    projector_num_heads: int = 4
    motif_feature_size: int = MOTIF_FEATURE_SIZE
    projector_mlp_depth: int = 6
    projector_hidden_act: str = "silu"
    motif_tokens_first: bool = True
    share_level_cross_attention: bool = True
    query_init_std: float = 1.0
    projector_attention: str = "released"
    graph_size_token: bool = False
    graph_token_id: int = 32000
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if isinstance(self.text_config, dict):
            model_type = self.text_config.get("model_type", "llama")
            self.text_config = CONFIG_MAPPING[model_type](**{**self.text_config, "model_type": model_type})
        elif self.text_config is None:
            self.text_config = CONFIG_MAPPING["llama"]()
        self.atom_feature_vocab_sizes = list(self.atom_feature_vocab_sizes)
        self.bond_feature_vocab_sizes = list(self.bond_feature_vocab_sizes)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._check_values()
        super().__post_init__(**kwargs)
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self.custom_pipelines = {**CUSTOM_PIPELINES, **(getattr(self, "custom_pipelines", None) or {})}

    def _check_values(self) -> None:
        if self.projector_type not in PROJECTOR_SPECS:
            raise ValueError(f"projector_type must be one of {tuple(PROJECTOR_SPECS)}, got {self.projector_type!r}")
        if self.projector_attention not in PROJECTOR_ATTENTIONS:
            raise ValueError(f"projector_attention must be one of {PROJECTOR_ATTENTIONS}, got {self.projector_attention!r}")
        if self.graph_size_token and self.projector_spec.attention_levels != "all":
            raise ValueError(f"graph_size_token is an option of the multilevel projectors, not of {self.projector_type!r}")
        if self.gnn_num_layers < 1 or self.gnn_hidden_size < 1:
            raise ValueError(
                f"gnn_num_layers and gnn_hidden_size must be positive, got {self.gnn_num_layers} and {self.gnn_hidden_size}"
            )
        if self.gnn_hidden_size % self.projector_num_heads:
            raise ValueError(
                f"gnn_hidden_size ({self.gnn_hidden_size}) must be divisible by projector_num_heads ({self.projector_num_heads})"
            )
        if self.projector_mlp_depth < 1:
            raise ValueError(f"projector_mlp_depth must be at least 1, got {self.projector_mlp_depth}")
        if len(self.atom_feature_vocab_sizes) != len(ATOM_FEATURE_VOCAB_SIZES) or len(self.bond_feature_vocab_sizes) != len(
            BOND_FEATURE_VOCAB_SIZES
        ):
            raise ValueError(
                f"the featurizer writes {len(ATOM_FEATURE_VOCAB_SIZES)} atom and {len(BOND_FEATURE_VOCAB_SIZES)} bond feature "
                f"columns, got {len(self.atom_feature_vocab_sizes)} and {len(self.bond_feature_vocab_sizes)} vocabulary sizes"
            )

    @property
    def num_graph_levels(self) -> int:
        """Node-state levels the GIN returns: its input embeddings plus one per layer."""
        return self.gnn_num_layers + 1

    @property
    def projector_spec(self) -> ProjectorSpec:
        """What this `projector_type` gives (`PROJECTOR_SPECS`)."""
        return PROJECTOR_SPECS[self.projector_type]

    @property
    def uses_graph(self) -> bool:
        """`False` for `projector_type="none"`, the text-only model (no graph encoder, no projector); the one test of it."""
        return self.projector_spec.uses_graph

    @property
    def text_embedding_size(self) -> int:
        """Width of the language model's input embeddings, which the graph vectors replace: `hidden_size` for most
        families, `word_embed_proj_dim` for OPT-350m (its decoder projects the embeddings up to `hidden_size`)."""
        for name in ("word_embed_proj_dim", "embedding_size"):
            value = getattr(self.text_config, name, None)
            if value:
                return value
        return self.text_config.hidden_size

    @property
    def uses_motifs(self) -> bool:
        return self.projector_spec.uses_motifs

    @property
    def num_graph_tokens(self) -> int | None:
        """Graph-token slots per molecule: fixed for the query-based projectors (28 with the defaults), 0 for
        `none`, and `None` for the per-atom MLP projectors, which give one token per atom."""
        count = self.projector_spec.graph_tokens
        return None if count is None else count(self) + int(self.graph_size_token)


LlamoConfig.register_for_auto_class()

__all__ = [
    "LlamoConfig", "GRAPH_INPUTS", "GRAPH_INPUT_NAMES", "GraphInput", "PROJECTOR_ATTENTIONS", "PROJECTOR_SPECS",
    "PROJECTOR_TYPES", "ProjectorSpec", "TEXT_CONFIG_TRANSFORMS", "TextConfigTransform", "num_molecules",
    "set_text_config_transforms",
]  # fmt: skip
