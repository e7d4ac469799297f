"""LLaMo's graph projectors: the GIN's levels of a batch of molecules -> graph tokens at the language model's width.

Each projector is a `LlamoProjector` subclass, and `PROJECTOR_SPECS` (the one table of `projector_type` names) says
what each makes: tokens per molecule, which graph inputs it reads, which attention maps it has. The configuration
reads the table (token counts, validation), the model builds from it, the tools draw from it: a new projector is a
change in this module and its test.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput


try:  # inside `try` so transformers' remote-code import check passes on the plain-module fallback below
    with warnings.catch_warnings():  # torch_geometric scripts helpers with torch.jit at import, deprecated in newer torch
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* deprecated", category=FutureWarning)
        from torch_geometric.utils import to_dense_batch
except ImportError as error:
    raise ImportError("LLaMo's graph projectors need torch_geometric: `pip install torch-geometric`.") from error

if TYPE_CHECKING:  # the projectors take a `LlamoConfig`; the configuration imports this module, not the reverse
    from transformers import PreTrainedConfig


@dataclass
class LlamoGraphOutput(ModelOutput):
    """
    Output of the graph side of LLaMo.

    Args:
        graph_features (`torch.FloatTensor` of shape `(num_graph_slots, hidden_size)`):
            Projected graph tokens of all molecules, in slot order (molecule by molecule).
        node_states (`tuple(torch.FloatTensor)`):
            The GIN's `gnn_num_layers + 1` levels of node states, each `(num_atoms, gnn_hidden_size)`.
        level_attentions (`torch.FloatTensor` of shape `(num_molecules, num_levels, num_queries, max_atoms)`, *optional*):
            Cross-attention weights of the level queries over each molecule's atoms (averaged over heads); padded
            atom positions are 0. The resampler reports its single attention as one level (the last GNN layer).
        motif_attentions (`torch.FloatTensor` of shape `(num_molecules, num_motif_queries, max_motifs)`, *optional*):
            Cross-attention weights of the motif queries over each molecule's functional groups.
    """

    graph_features: torch.FloatTensor | None = None
    node_states: tuple[torch.FloatTensor, ...] | None = None
    level_attentions: torch.FloatTensor | None = None
    motif_attentions: torch.FloatTensor | None = None


class LlamoGraphTokenHead(nn.Module):
    """LayerNorm (computed in fp32, as the original) then an MLP from the graph width to the LLM width."""

    _keep_in_fp32 = ("layer_norm",)

    def __init__(self, input_size: int, config: PreTrainedConfig):
        super().__init__()
        # the width of the LLM's input embeddings, which the graph vectors replace (OPT-350m: word_embed_proj_dim)
        output_size = config.text_embedding_size
        self.layer_norm = nn.LayerNorm(input_size)
        layers = [nn.Linear(input_size, output_size)]
        for _ in range(config.projector_mlp_depth - 1):
            layers += [ACT2FN[config.projector_hidden_act], nn.Linear(output_size, output_size)]
        self.mlp = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(
            tokens.float(),
            self.layer_norm.normalized_shape,
            self.layer_norm.weight.float(),
            self.layer_norm.bias.float(),
            self.layer_norm.eps,
        )
        return self.mlp(normed.to(self.mlp[0].weight.dtype))


def attend_to_sets(
    attention: nn.MultiheadAttention, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor, need_weights: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cross-attention of `queries` [B, Q, H] over padded sets `keys` [B, N, H] (`key_mask` True = real element).

    A molecule with an empty set (no functional groups) gets its queries back unchanged, as in LLaMo. Its first
    padding slot is unmasked only to keep softmax finite: a fully masked row would produce NaN and poison the
    gradients of the shared attention even though its output is discarded.
    """
    keys = keys.to(queries.dtype)
    if keys.shape[1] == 0:
        weights = queries.new_zeros(queries.shape[0], queries.shape[1], 0) if need_weights else None
        return queries, weights
    empty = ~key_mask.any(dim=1)
    padding_mask = ~key_mask
    padding_mask[:, 0] &= ~empty
    attended, weights = attention(queries, keys, keys, key_padding_mask=padding_mask, need_weights=need_weights)
    attended = torch.where(empty[:, None, None], queries, attended)
    if weights is not None:
        weights = weights.masked_fill(empty[:, None, None], 0.0)
    return attended, weights


class LlamoProjector(nn.Module):
    """Interface of the graph projectors: the GIN's levels of a batch of molecules -> graph tokens at the LLM's width.

    A projector is built from the config alone, is named in `PROJECTOR_SPECS` under the `projector_type` names it
    implements (with how many tokens each makes, whether it reads motifs and has attention maps), initializes its
    own parameters in
    `init_projector_weights`, and returns a `LlamoGraphOutput` whose `graph_features` are
    `config.num_graph_tokens` rows per molecule (one per atom when that is `None`), molecule by molecule.
    """

    # Kept out of quantization, whole (see `modeling_llamo.unquantized_names`): small, trained in both stages.
    _keep_unquantized = ("",)

    def __init__(self, config: PreTrainedConfig):
        super().__init__()
        self.use_motifs = config.uses_motifs

    def init_projector_weights(self, config: PreTrainedConfig) -> None:
        """Initialize the parameters this module owns directly (called by `LlamoPreTrainedModel._init_weights`
        after the generic rules for Linear, LayerNorm, attention, ...)."""

    def forward(
        self,
        levels: tuple[torch.Tensor, ...],
        node_batch: torch.LongTensor,
        num_molecules: int,
        motif_features: torch.Tensor | None = None,
        motif_batch: torch.LongTensor | None = None,
        output_attentions: bool = False,
    ) -> LlamoGraphOutput:
        raise NotImplementedError


class LlamoMultiLevelProjector(LlamoProjector):
    """MGProj: learned queries per GNN level (and over functional-group motifs) cross-attend the molecule; the
    resulting tokens are normalized and mapped to the LLM's width. With the defaults: 6 x 4 + 4 = 28 tokens."""

    def __init__(self, config: PreTrainedConfig):
        super().__init__(config)
        hidden, heads = config.gnn_hidden_size, config.projector_num_heads
        self.num_levels = config.num_graph_levels
        self.motif_tokens_first = config.motif_tokens_first
        self.level_queries = nn.Parameter(torch.empty(self.num_levels, config.num_query_tokens_per_level, hidden))
        num_attentions = 1 if config.share_level_cross_attention else self.num_levels
        self.level_attentions = nn.ModuleList(
            nn.MultiheadAttention(hidden, heads, batch_first=True) for _ in range(num_attentions)
        )
        if self.use_motifs:
            self.motif_embedding = nn.Linear(config.motif_feature_size, hidden, bias=False)
            self.motif_queries = nn.Parameter(torch.empty(config.num_motif_query_tokens, hidden))
            self.motif_attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.head = LlamoGraphTokenHead(hidden, config)
        # `projector_attention="normed"`: unit-scale keys per level and sharper queries (see LlamoConfig).
        self.normed = config.projector_attention == "normed"
        if self.normed:
            self.level_norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(self.num_levels))
            self.query_log_scale = nn.Parameter(torch.empty(self.num_levels, 1, 1))
        self.size_head = nn.Linear(hidden, config.text_embedding_size) if config.graph_size_token else None

    def init_projector_weights(self, config: PreTrainedConfig) -> None:
        init.normal_(self.level_queries, mean=0.0, std=config.query_init_std)
        if self.use_motifs:
            init.normal_(self.motif_queries, mean=0.0, std=config.query_init_std)
        if self.normed:  # logits scaled by sqrt(head dim) / sqrt(head dim) = 1 at init instead of 1 / sqrt(head dim)
            head_dim = config.gnn_hidden_size // config.projector_num_heads
            init.constant_(self.query_log_scale, 0.5 * torch.tensor(float(head_dim)).log().item())

    def forward(
        self,
        levels: tuple[torch.Tensor, ...],
        node_batch: torch.LongTensor,
        num_molecules: int,
        motif_features: torch.Tensor | None,
        motif_batch: torch.LongTensor | None,
        output_attentions: bool = False,
    ) -> LlamoGraphOutput:
        # All levels padded per molecule in one call: [B, max_atoms, L + 1, H] -> [L + 1, B, max_atoms, H]
        dense, atom_mask = to_dense_batch(torch.cat(levels, dim=-1), node_batch, batch_size=num_molecules)
        dense = dense.unflatten(-1, (self.num_levels, -1)).permute(2, 0, 1, 3)
        queries = self.level_queries[:, None].expand(-1, num_molecules, -1, -1)
        if self.normed:
            # The GIN's states are fp32 (an fp32 island); the norms are in the projector's dtype (bf16 in a bf16 load)
            dense = dense.to(self.level_queries.dtype)
            dense = torch.stack([norm(level) for norm, level in zip(self.level_norms, dense)])
            queries = queries * self.query_log_scale.exp()[:, None]

        if len(self.level_attentions) == 1:  # shared attention: every level in a single batched call
            tokens, weights = attend_to_sets(
                self.level_attentions[0],
                queries.flatten(0, 1),
                dense.flatten(0, 1),
                atom_mask.repeat(self.num_levels, 1),
                output_attentions,
            )
            tokens = tokens.unflatten(0, (self.num_levels, num_molecules))
            weights = weights.unflatten(0, (self.num_levels, num_molecules)) if output_attentions else None
        else:
            per_level = [
                attend_to_sets(attention, queries[level], dense[level], atom_mask, output_attentions)
                for level, attention in enumerate(self.level_attentions)
            ]
            tokens = torch.stack([level_tokens for level_tokens, _ in per_level])
            weights = torch.stack([level_weights for _, level_weights in per_level]) if output_attentions else None
        level_tokens = tokens.permute(1, 0, 2, 3).flatten(1, 2)  # [B, (L + 1) * Q, H], level by level
        level_weights = weights.permute(1, 0, 2, 3) if output_attentions else None

        motif_weights = None
        if self.use_motifs:
            motif_tokens, motif_weights = self._motif_tokens(motif_features, motif_batch, num_molecules, output_attentions)
            parts = (motif_tokens, level_tokens) if self.motif_tokens_first else (level_tokens, motif_tokens)
            level_tokens = torch.cat(parts, dim=1)
        graph_tokens = self.head(level_tokens)
        if self.size_head is not None:
            graph_tokens = torch.cat([graph_tokens, self._size_token(levels[-1], node_batch, num_molecules)], dim=1)
        return LlamoGraphOutput(
            graph_features=graph_tokens.flatten(0, 1),
            node_states=levels,
            level_attentions=level_weights,
            motif_attentions=motif_weights,
        )

    def _size_token(self, last_level: torch.Tensor, node_batch: torch.LongTensor, num_molecules: int) -> torch.Tensor:
        """[B, 1, LLM width]: the sum of the layer-normed atom states, whose norm grows with the molecule."""
        normed = F.layer_norm(last_level.float(), last_level.shape[-1:])
        summed = normed.new_zeros(num_molecules, normed.shape[-1]).index_add_(0, node_batch, normed)
        return self.size_head(summed.to(self.size_head.weight.dtype))[:, None]

    def _motif_tokens(
        self,
        motif_features: torch.Tensor | None,
        motif_batch: torch.LongTensor | None,
        num_molecules: int,
        output_attentions: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if motif_features is None or motif_batch is None:
            raise ValueError(
                "this LLaMo projector uses functional-group motifs: pass `graph_motif_features` and `graph_motif_batch` "
                "(LlamoProcessor returns them)"
            )
        embedded = self.motif_embedding(motif_features.to(self.motif_embedding.weight.dtype))
        dense, motif_mask = to_dense_batch(embedded, motif_batch, batch_size=num_molecules)
        queries = self.motif_queries[None].expand(num_molecules, -1, -1)
        return attend_to_sets(self.motif_attention, queries, dense, motif_mask, output_attentions)


class LlamoResamplerProjector(LlamoProjector):
    """Ablation: one set of learned queries cross-attending the last GNN layer (no levels, no motifs)."""

    def __init__(self, config: PreTrainedConfig):
        super().__init__(config)
        hidden = config.gnn_hidden_size
        self.queries = nn.Parameter(torch.empty(config.num_graph_tokens, hidden))
        self.attention = nn.MultiheadAttention(hidden, config.projector_num_heads, batch_first=True)
        self.head = LlamoGraphTokenHead(hidden, config)

    def init_projector_weights(self, config: PreTrainedConfig) -> None:
        init.normal_(self.queries, mean=0.0, std=config.query_init_std)

    def forward(self, levels, node_batch, num_molecules, motif_features=None, motif_batch=None, output_attentions=False):
        dense, atom_mask = to_dense_batch(levels[-1], node_batch, batch_size=num_molecules)
        queries = self.queries[None].expand(num_molecules, -1, -1)
        tokens, weights = attend_to_sets(self.attention, queries, dense, atom_mask, output_attentions)
        return LlamoGraphOutput(
            graph_features=self.head(tokens).flatten(0, 1),
            node_states=levels,
            level_attentions=weights[:, None] if output_attentions else None,
        )


class LlamoNodeProjector(LlamoProjector):
    """Ablation: one graph token per atom, an MLP on the lowest, the highest or all levels concatenated."""

    def __init__(self, config: PreTrainedConfig):
        super().__init__(config)
        self.levels = {"mlp_low": "low", "mlp_high": "high", "mlp_concat": "concat"}[config.projector_type]
        width = config.gnn_hidden_size * (config.num_graph_levels if self.levels == "concat" else 1)
        self.head = LlamoGraphTokenHead(width, config)

    def forward(self, levels, node_batch, num_molecules, motif_features=None, motif_batch=None, output_attentions=False):
        if self.levels == "concat":
            nodes = torch.cat(levels, dim=-1)
        else:
            nodes = levels[0] if self.levels == "low" else levels[-1]
        return LlamoGraphOutput(graph_features=self.head(nodes), node_states=levels)


@dataclass(frozen=True)
class ProjectorSpec:
    """What a `projector_type` means outside the model code: how many graph-token slots the processor writes per
    molecule, which graph inputs it reads, whether it has attention maps to draw, and the module that implements it.

    Args:
        projector: the `LlamoProjector` subclass (`None` for the text-only model).
        description: what the graph tokens are made of (paper, Table 4).
        graph_tokens: tokens per molecule as a function of the config; `None`: one token per atom.
        uses_motifs: reads the functional-group inputs (`graph_motif_*`).
        attention_levels: `"all"` (one cross-attention map per GNN level), `"last"` (one map, over the last GNN
            layer) or `None` (no cross-attention).
    """

    projector: type[LlamoProjector] | None
    description: str
    graph_tokens: Callable[[PreTrainedConfig], int] | None
    uses_motifs: bool = False
    attention_levels: str | None = None

    @property
    def uses_graph(self) -> bool:
        """`False` for the text-only model (no graph encoder, no projector)."""
        return self.projector is not None


def _level_query_tokens(config: PreTrainedConfig) -> int:
    return config.num_query_tokens_per_level * config.num_graph_levels


def _level_and_motif_query_tokens(config: PreTrainedConfig) -> int:
    return _level_query_tokens(config) + config.num_motif_query_tokens


# projector_type -> its spec; the first is the paper's model. A new projector: a `LlamoProjector` subclass above and
# its line here (the configuration, the processor, the model and the tools all read this table).
PROJECTOR_SPECS = {
    "multilevel": ProjectorSpec(
        LlamoMultiLevelProjector, "MGProj: learned queries per GNN level + motif queries, cross-attention (the paper's model)",
        _level_and_motif_query_tokens, uses_motifs=True, attention_levels="all",
    ),
    "multilevel_no_motif": ProjectorSpec(
        LlamoMultiLevelProjector, "MGProj without the functional-group tokens", _level_query_tokens, attention_levels="all"
    ),
    "mlp_low": ProjectorSpec(LlamoNodeProjector, "one token per atom: MLP on the lowest level (atom embeddings before message passing)", None),
    "mlp_high": ProjectorSpec(LlamoNodeProjector, "one token per atom: MLP on the last GNN layer", None),
    "mlp_concat": ProjectorSpec(LlamoNodeProjector, "one token per atom: MLP on all levels concatenated", None),
    "resampler": ProjectorSpec(
        LlamoResamplerProjector, "learned queries cross-attending the last GNN layer, as many tokens as `multilevel`",
        _level_and_motif_query_tokens, attention_levels="last",
    ),
    "none": ProjectorSpec(None, "no graph at all: the language model reads the SMILES text only", lambda config: 0),
}  # fmt: skip
PROJECTOR_TYPES = tuple(PROJECTOR_SPECS)


def build_projector(config: PreTrainedConfig) -> LlamoProjector | None:
    """The config's projector, or None for a text-only model."""
    return None if config.projector_spec.projector is None else config.projector_spec.projector(config)


__all__ = [
    "PROJECTOR_SPECS", "PROJECTOR_TYPES", "LlamoGraphOutput", "LlamoGraphTokenHead", "LlamoMultiLevelProjector",
    "LlamoNodeProjector", "LlamoProjector", "LlamoResamplerProjector", "ProjectorSpec", "attend_to_sets", "build_projector",
]  # fmt: skip
