"""The decoder: one embedding over the unified vocabulary, a GPT-2-shaped stack of pre-LN blocks
whose FFN is a sparse mixture of experts on chosen layers, and a tied output head.

The paper's decoder (arXiv 2312.02520): GPT-2 small (12 layers, width 768, 12 heads, 2060
positions, LayerNorm eps 1e-12, dropout 0.1) trained from scratch; the 6 even-numbered layers
(1-indexed 2, 4, ..., 12, i.e. 0-indexed 1, 3, ..., 11) replace the FFN with an 8-expert top-2
MoE. Its mixture of experts: the attribute-routed AG-MoE or the GShard baseline (unicl/moe).
Parameter counts: docs/model.md.

Letters: B batch, T new tokens, S keys (cached + new), D width, H heads, Dh = D / H head width,
V embedding rows (vocabulary padded), E experts, L layers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from unicl.attributes import num_attributes
from unicl.blocks import Block
from unicl.copy_head import COPY_VALUES, CopyHead, CopyVotes, add_votes
from unicl.kv_cache import KVCache
from unicl.moe.activations import ACTIVATIONS
from unicl.moe.backends import BACKENDS
from unicl.moe.plan import build_attribute_plan

if TYPE_CHECKING:
    from unicl.vocab import Vocabulary

ROUTER_CHOICES = ("attribute", "topk", "dense")
#: rules accepted by ModelConfig.moe_layers besides an explicit list of 0-indexed layers
MOE_LAYER_RULES = ("even", "odd", "all", "none")


@dataclasses.dataclass
class ModelConfig:
    """Decoder shape and MoE policy. Defaults: the tiny CPU model; `paper()`: M2oEGPT."""

    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    d_ff: int = 1024
    #: longest sequence (positions are learned); 544 holds 4 pairs of 2*(1+64)+1 tokens + a prefix
    max_positions: int = 544
    dropout: float = 0.0
    ln_eps: float = 1e-12
    #: which layers have an MoE FFN: a list of 0-indexed layers, or a rule: "even" = the paper's
    #: even-numbered layers counted from 1 (0-indexed 1, 3, 5, ...), "odd" (0-indexed 0, 2, ...),
    #: "all", "none"
    moe_layers: list[int] | str = "even"
    tie_embeddings: bool = True
    num_experts: int = 4
    top_k: int = 2
    #: "attribute" (AG-MoE), "topk" (GShard) or "dense" (no MoE anywhere: the dense ablation)
    router: str = "attribute"
    #: None = dropless; else each expert takes at most ceil(top_k * N / E * factor) tokens
    capacity_factor: float | None = None
    #: std of the Gaussian noise on router logits in training; None = 1/E (attribute), 0 (topk)
    router_noise: float | None = None
    #: width of the attribute router's embedding and hidden layer; None = d_model
    router_dim: int | None = None
    #: lambda of the load-balancing loss: loss = CE + aux_loss_weight * sum of layer aux losses
    aux_loss_weight: float = 0.02
    moe_backend: str = "auto"
    #: attribute routing: group tokens by attribute once per forward and let every MoE layer
    #: reuse that grouping (moe/plan.py) instead of sorting its assignments again
    attribute_plan: bool = True
    #: FFN nonlinearity (GPT-2 uses the tanh approximation of GELU)
    activation: str = "gelu_tanh"
    #: add a learned embedding of each token's routing attribute (task x span x role) to its
    #: input; off in the paper (no type embedding). Parallel mask answers need it: their
    #: placeholders are image codes that only their output role tells apart
    attribute_embedding: bool = False
    #: add a learned projection of each id's fixed code features (Vocabulary.code_features:
    #: the VQ-GAN codebook vector of an image code, the bits of a mask code) to its input, so
    #: that image codes start out meaning what they look like; off in the paper
    code_features: bool = False
    #: a copy head (pointer attention): each final hidden state adds the output rows (the tied
    #: embedding) of the earlier text tokens it attends to, so a word of the prompt, e.g. an
    #: unseen category's name, can be written without first being learned as an output; off
    #: in the paper (docs/model.md "Copying words from the prompt")
    copy_head: bool = False
    #: the copy head also looks at the token after the one it just copied, so names of several
    #: BPE pieces are copied whole (CopyHead); needs copy_head
    copy_continue: bool = False
    #: what a copied source adds: "rows", its output row to the hidden state (which lifts
    #: every token with a similar row too), or "tokens", a vote for its own token id in the
    #: logits and nothing else (CopyHead)
    copy_values: str = "rows"

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "d_ff", "max_positions", "num_experts"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must lie in [0, 1), got {self.dropout}")
        if self.router not in ROUTER_CHOICES:
            raise ValueError(f"model.router must be one of {ROUTER_CHOICES}, got {self.router!r}")
        if self.moe_backend not in BACKENDS:
            raise ValueError(
                f"model.moe_backend must be one of {BACKENDS}, got {self.moe_backend!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"model.activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(
                f"model.top_k must lie in [1, num_experts={self.num_experts}], got {self.top_k}"
            )
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError(
                f"model.capacity_factor must be > 0 or null, got {self.capacity_factor}"
            )
        if self.aux_loss_weight < 0:
            raise ValueError(f"model.aux_loss_weight must be >= 0, got {self.aux_loss_weight}")
        if self.copy_continue and not self.copy_head:
            raise ValueError("model.copy_continue needs model.copy_head: true")
        if self.copy_values not in COPY_VALUES:
            raise ValueError(
                f"model.copy_values must be one of {COPY_VALUES}, got {self.copy_values!r}"
            )
        self.moe_layer_indices()  # validates moe_layers

    def moe_layer_indices(self) -> list[int]:
        """0-indexed layers with an MoE FFN (none when router = "dense")."""
        if self.router == "dense":
            return []
        rule = self.moe_layers
        if isinstance(rule, str):
            if rule not in MOE_LAYER_RULES:
                raise ValueError(
                    f"model.moe_layers must be a list of layers or one of {MOE_LAYER_RULES}, "
                    f"got {rule!r}"
                )
            return {
                "even": list(range(1, self.n_layer, 2)),
                "odd": list(range(0, self.n_layer, 2)),
                "all": list(range(self.n_layer)),
                "none": [],
            }[rule]
        bad = [i for i in rule if not 0 <= i < self.n_layer]
        if bad or len(set(rule)) != len(rule):
            raise ValueError(
                f"model.moe_layers: layers must be distinct and in [0, {self.n_layer}), got {rule}"
            )
        return sorted(rule)

    @classmethod
    def paper(cls, **overrides) -> ModelConfig:
        """M2oEGPT (arXiv 2312.02520): GPT-2 small with 8-expert top-2 AG-MoE on 6 layers."""
        values = dict(
            n_layer=12,
            n_head=12,
            d_model=768,
            d_ff=3072,
            max_positions=2060,
            dropout=0.1,
            ln_eps=1e-12,
            moe_layers="even",
            num_experts=8,
            top_k=2,
            router="attribute",
        )
        values.update(overrides)
        return cls(**values)


class DecoderOutput(NamedTuple):
    #: (B, T, V) next-token logits, or None when the forward was asked for hidden states
    logits: torch.Tensor | None
    #: (B, T, D) final (layer-normed) hidden states, or None when logits were computed
    hidden: torch.Tensor | None
    #: scalar sum of the MoE layers' load-balancing losses (0 without MoE layers)
    aux_loss: torch.Tensor
    #: per MoE layer, (E,) int64 kept token assignments per expert
    expert_load: list[torch.Tensor]
    #: per MoE layer, scalar number of assignments dropped by the capacity limit
    dropped: list[torch.Tensor]
    #: the cache passed in, now holding these tokens too (None without a cache)
    kv_cache: KVCache | None
    #: the copy head's votes (ModelConfig.copy_values = "tokens"), to add wherever logits
    #: are made from `hidden` (they are already in `logits`); None otherwise
    copy_votes: CopyVotes | None = None


class UniclDecoder(nn.Module):
    """Token + position embedding -> L blocks -> LayerNorm -> (tied) vocabulary head."""

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        num_attributes: int,
        code_features: torch.Tensor | None = None,
        copy_sources: torch.Tensor | None = None,
        name_brackets: tuple[int, int] | None = None,
    ):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if num_attributes < 1:
            raise ValueError(f"num_attributes must be >= 1, got {num_attributes}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.num_attributes = num_attributes
        self.moe_layers = cfg.moe_layer_indices()
        self.wte = nn.Embedding(vocab_size, cfg.d_model)  # (V, D)
        self.wpe = nn.Embedding(cfg.max_positions, cfg.d_model)  # (P, D)
        # (A, D) attribute embedding, or None (the paper's model)
        self.wae = nn.Embedding(num_attributes, cfg.d_model) if cfg.attribute_embedding else None
        self.code_proj = None
        if cfg.code_features:
            if code_features is None or code_features.shape[0] != vocab_size:
                raise ValueError(
                    f"model.code_features needs a ({vocab_size}, F) feature table "
                    "(Vocabulary.code_features), got "
                    f"{None if code_features is None else tuple(code_features.shape)}"
                )
            # (V, F) fixed features, rebuilt from the tokenizers (not saved with the weights)
            self.register_buffer("code_feat", code_features.float(), persistent=False)
            self.code_proj = nn.Linear(code_features.shape[1], cfg.d_model, bias=False)
        self.copy = None
        if cfg.copy_head:
            if copy_sources is None or tuple(copy_sources.shape) != (vocab_size,):
                raise ValueError(
                    f"model.copy_head needs a ({vocab_size},) bool table of the ids it may copy "
                    "(Vocabulary.allowed_mask of the text spans), got "
                    f"{None if copy_sources is None else tuple(copy_sources.shape)}"
                )
            self.register_buffer("copy_sources", copy_sources.bool(), persistent=False)
            self.copy = CopyHead(cfg, name_brackets)
        self.drop = nn.Dropout(cfg.dropout)
        moe = set(self.moe_layers)
        self.blocks = nn.ModuleList(
            Block(cfg, i in moe, num_attributes) for i in range(cfg.n_layer)
        )
        self.reuse_attribute_plan = bool(
            cfg.attribute_plan
            and self.moe_layers
            and cfg.router == "attribute"
            and cfg.capacity_factor is None
        )
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 L) so the residual stream keeps its size
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def head_weight(self) -> torch.Tensor:
        """(V, D) output projection: the token embedding when tied."""
        return self.wte.weight if self.head is None else self.head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of final hidden states: (..., D) -> (..., V)."""
        return F.linear(hidden, self.head_weight)

    def num_parameters(self, exclude_position: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if exclude_position else n

    def _check(self, input_ids, attributes, positions, attention_mask, kv_cache) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
        shape = tuple(input_ids.shape)
        for name, t in (("attributes", attributes), ("positions", positions)):
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"{name} must have the shape of input_ids {shape}, got {tuple(t.shape)}"
                )
        if attention_mask is not None and tuple(attention_mask.shape) != shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {shape}, "
                f"got {tuple(attention_mask.shape)}"
            )
        if input_ids.numel() == 0:
            raise ValueError("input_ids is empty")
        # one host sync for all range checks
        bounds = torch.stack(
            [t.min().long() for t in (positions, input_ids, attributes)]
            + [t.max().long() for t in (positions, input_ids, attributes)]
        ).tolist()
        (p_lo, i_lo, a_lo), (p_hi, i_hi, a_hi) = bounds[:3], bounds[3:]
        if p_lo < 0 or p_hi >= self.cfg.max_positions:
            raise ValueError(
                f"positions must lie in [0, max_positions={self.cfg.max_positions}), got "
                f"[{p_lo}, {p_hi}]: the sequence is longer than the model's positions"
            )
        if i_lo < 0 or i_hi >= self.vocab_size:
            raise ValueError(f"input_ids must lie in [0, {self.vocab_size}), got [{i_lo}, {i_hi}]")
        if a_lo < 0 or a_hi >= self.num_attributes:
            raise ValueError(
                f"attribute ids must lie in [0, num_attributes={self.num_attributes}), "
                f"got [{a_lo}, {a_hi}]"
            )
        if kv_cache is not None:
            if kv_cache.batch != shape[0]:
                raise ValueError(f"kv_cache has {kv_cache.batch} rows, input_ids {shape[0]}")
            if kv_cache.length + shape[1] > kv_cache.capacity:
                raise ValueError(
                    f"kv_cache holds {kv_cache.length} of {kv_cache.capacity} tokens; "
                    f"{shape[1]} more do not fit"
                )

    def _mask(self, attention_mask, kv_cache, t: int, device) -> torch.Tensor | None:
        """Boolean (B, 1, T, S) attention mask, or None for plain causal attention."""
        past = 0 if kv_cache is None else kv_cache.length
        if kv_cache is not None:
            new = attention_mask if attention_mask is not None else True
            kv_cache.valid[:, past : past + t] = new
            key_valid = kv_cache.valid[:, : past + t]  # (B, S)
            if t == 1 and bool(key_valid.all()):
                return None  # one new token sees every cached key
        elif attention_mask is None:
            return None
        else:
            key_valid = attention_mask  # (B, S = T)
        s = past + t
        q_pos = torch.arange(past, s, device=device)  # (T,)
        k_pos = torch.arange(s, device=device)  # (S,)
        causal = k_pos[None, :] <= q_pos[:, None]  # (T, S)
        # a padding query still attends to itself, so no row is all -inf (no NaNs)
        own = k_pos[None, :] == q_pos[:, None]  # (T, S)
        return (causal & (key_valid[:, None, :] | own))[:, None]  # (B, 1, T, S)

    def forward(
        self,
        input_ids: torch.Tensor,
        attributes: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> DecoderOutput:
        """input_ids, attributes, positions: (B, T) int64; attention_mask (B, T) bool, False on
        padding keys (not needed for right padding: causality already hides it).
        With `kv_cache`, the T tokens follow the cached ones (which is then updated in place).
        """
        self._check(input_ids, attributes, positions, attention_mask, kv_cache)
        b, t = input_ids.shape
        mask = self._mask(attention_mask, kv_cache, t, input_ids.device)
        x = self.wte(input_ids) + self.wpe(positions)  # (B, T, D)
        if self.wae is not None:
            x = x + self.wae(attributes)
        if self.code_proj is not None:
            feat = self.code_feat[input_ids].to(self.code_proj.weight.dtype)  # (B, T, F)
            x = x + self.code_proj(feat)  # (B, T, D)
        x = self.drop(x)
        aux = x.new_zeros(())
        loads, dropped = [], []
        # attribute routing sends every token of one attribute to the same experts: group the
        # tokens by attribute once here, and each MoE layer only permutes the attribute blocks
        plan = None
        if self.reuse_attribute_plan:
            plan = build_attribute_plan(attributes.reshape(-1), self.num_attributes)
        for i, block in enumerate(self.blocks):
            x, moe_out = block(x, attributes, mask, kv_cache, i, plan)
            if moe_out is not None:
                aux = aux + moe_out.aux_loss
                loads.append(moe_out.router.expert_load)
                dropped.append(moe_out.router.dropped)
        hidden = self.ln_f(x)  # (B, T, D)
        if self.copy is not None:
            if kv_cache is not None:
                key_valid = kv_cache.valid[:, : kv_cache.length + t]  # (B, S)
            else:
                key_valid = attention_mask  # (B, T) or None
            hidden, votes = self.copy(
                hidden, input_ids, self.copy_sources, self.head_weight, mask, key_valid, kv_cache
            )
        else:
            votes = None
        if kv_cache is not None:
            kv_cache.length += t
        logits = None
        if not return_hidden:
            logits = self.logits(hidden)  # (B, T, V)
            if votes is not None:
                logits = add_votes(logits, votes.weights, votes.ids)
        return DecoderOutput(
            logits=logits,
            hidden=hidden if return_hidden else None,
            aux_loss=aux,
            expert_load=loads,
            dropped=dropped,
            kv_cache=kv_cache,
            copy_votes=votes,
        )

    def new_cache(self, batch: int, capacity: int, dtype=None, device=None) -> KVCache:
        """An empty KVCache for `batch` rows of up to `capacity` tokens."""
        ref = self.wte.weight
        return KVCache.empty(self.cfg, batch, capacity, dtype or ref.dtype, device or ref.device)


def build_model(
    cfg: ModelConfig,
    vocab_size: int,
    num_attributes: int,
    code_features: torch.Tensor | None = None,
    copy_sources: torch.Tensor | None = None,
    name_brackets: tuple[int, int] | None = None,
) -> UniclDecoder:
    """The decoder for a vocabulary of `vocab_size` embedding rows and `num_attributes` routing
    attribute ids (Vocabulary.embedding_size and unicl.attributes.num_attributes); with
    `cfg.code_features`, `code_features` is Vocabulary.code_features(); with `cfg.copy_head`,
    `copy_sources` is the (V,) bool table of the ids it may copy, and with `cfg.copy_continue`
    `name_brackets` the ids of `<c_st>` and `<c_ed>`. `build_decoder` fills all of them from
    a vocabulary."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    return UniclDecoder(cfg, vocab_size, num_attributes, code_features, copy_sources, name_brackets)


def build_decoder(cfg: ModelConfig, vocab: Vocabulary, tasks: Sequence[str]) -> UniclDecoder:
    """The decoder of `vocab` and the task names `tasks` (their routing attributes); a copy
    head may copy the ids of the text tokenizers."""
    text = [name for name, tok in vocab.tokenizers.items() if tok.modality == "text"]
    return build_model(
        cfg,
        vocab.embedding_size,
        num_attributes(vocab, sorted(tasks)),
        vocab.code_features() if cfg.code_features else None,
        vocab.allowed_mask(spans=text) if cfg.copy_head else None,
        (vocab["<c_st>"], vocab["<c_ed>"]) if cfg.copy_continue else None,
    )
