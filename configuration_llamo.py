"""LLaMo model configuration."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING


# Model inputs describing the molecules of a batch, as `LlamoProcessor` returns them (flat, PyG-style).
GRAPH_INPUT_NAMES = (
    "graph_node_features",  # [num_atoms, 9] OGB atom features
    "graph_edge_index",  # [2, num_edges] directed bonds, indices into the atoms
    "graph_edge_features",  # [num_edges, 3] OGB bond features
    "graph_node_batch",  # [num_atoms] molecule of each atom
    "graph_motif_features",  # [num_motifs, 73] functional-group descriptors
    "graph_motif_batch",  # [num_motifs] molecule of each motif
)

# Every saved LLaMo config maps the auto classes to the code files saved next to it (whichever class saved it).
AUTO_MAP = {
    "AutoConfig": "configuration_llamo.LlamoConfig",
    "AutoModel": "modeling_llamo.LlamoModel",
    "AutoModelForCausalLM": "modeling_llamo.LlamoForConditionalGeneration",
}

# projector_type -> what the graph tokens are made of (paper, Table 4)
PROJECTOR_TYPES = (
    "multilevel",  # MGProj: learned queries per GNN level + motif queries, cross-attention (the paper's model)
    "multilevel_no_motif",  # MGProj without the functional-group tokens
    "mlp_low",  # one token per atom: MLP on the lowest level (atom embeddings before message passing)
    "mlp_high",  # one token per atom: MLP on the last GNN layer
    "mlp_concat",  # one token per atom: MLP on all levels concatenated
    "resampler",  # learned queries cross-attending the last GNN layer, as many tokens as `multilevel`
    "none",  # no graph at all: the language model reads the SMILES text only
)

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
            atom (9) and bond (3) feature columns.
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
    atom_feature_vocab_sizes: list[int] | tuple[int, ...] = (119, 5, 12, 12, 10, 6, 6, 2, 2)
    bond_feature_vocab_sizes: list[int] | tuple[int, ...] = (5, 6, 2)
    projector_type: str = "multilevel"
    num_query_tokens_per_level: int = 4
    num_motif_query_tokens: int = 4
    projector_num_heads: int = 4
    motif_feature_size: int = 73
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

    def _check_values(self) -> None:
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type must be one of {PROJECTOR_TYPES}, got {self.projector_type!r}")
        if self.projector_attention not in PROJECTOR_ATTENTIONS:
            raise ValueError(f"projector_attention must be one of {PROJECTOR_ATTENTIONS}, got {self.projector_attention!r}")
        if self.graph_size_token and self.projector_type not in ("multilevel", "multilevel_no_motif"):
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
        if len(self.atom_feature_vocab_sizes) != 9 or len(self.bond_feature_vocab_sizes) != 3:
            raise ValueError(
                "the OGB schema has 9 atom and 3 bond feature columns, got "
                f"{len(self.atom_feature_vocab_sizes)} and {len(self.bond_feature_vocab_sizes)} vocabulary sizes"
            )

    @property
    def num_graph_levels(self) -> int:
        """Node-state levels the GIN returns: its input embeddings plus one per layer."""
        return self.gnn_num_layers + 1

    @property
    def uses_motifs(self) -> bool:
        return self.projector_type == "multilevel"

    @property
    def num_graph_tokens(self) -> int | None:
        """Graph-token slots per molecule: fixed for the query-based projectors (28 with the defaults), 0 for
        `none`, and `None` for the per-atom MLP projectors, which give one token per atom."""
        if self.projector_type == "none":
            return 0
        if self.projector_type.startswith("mlp_"):
            return None
        level_tokens = self.num_query_tokens_per_level * self.num_graph_levels + int(self.graph_size_token)
        if self.projector_type == "multilevel_no_motif":
            return level_tokens
        return level_tokens + self.num_motif_query_tokens  # multilevel, and resampler with the same count


LlamoConfig.register_for_auto_class()

__all__ = ["LlamoConfig", "GRAPH_INPUT_NAMES", "PROJECTOR_ATTENTIONS", "PROJECTOR_TYPES"]
