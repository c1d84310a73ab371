"""The mmBERT / ModernBERT masked-LM encoder, running on unpadded tokens.

Module and parameter names reproduce transformers' `ModernBertForMaskedLM`, so ``state_dict()`` keys are
identical (``model.embeddings.tok_embeddings.weight`` ... ``head.dense.weight``, ``decoder.bias``); the decoder
weight is the token embedding matrix itself and is not a separate key.

Architecture (pre-norm, no biases except the decoder's)::

    x = LayerNorm(Embedding(ids))                                        # embeddings.norm
    for layer i:  x = x + Wo(Attention(RoPE(Wqkv(attn_norm_i(x)))))     # attn_norm is Identity for i = 0
                  x = x + Wo(gelu(a) * g) with (a, g) = Wi(mlp_norm_i(x)).chunk(2)
    h = final_norm(x);  logits = LayerNorm(gelu(dense(h))) @ E^T + bias  # head, tied decoder
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from ..constants import IGNORE_INDEX
from .attention import ATTENTION_BACKENDS, check_trainable, resolve_backend
from .config import ModelConfig, output_projection_std
from .layout import FlatBatch, TokenLayout, flatten_batch
from .mlm_loss import linear_cross_entropy
from .rope import apply_rotary, rotary_cos_sin


@dataclass
class MaskedLMOutput:
    """``loss``: mean cross-entropy over labelled tokens (None without labels).

    ``logits``: ``input_ids.shape + (vocab,)`` without labels; with labels None by default (the chunked loss never
    forms them), or with ``return_logits=True`` ``(n_labelled, vocab)`` (sparse prediction, labelled positions in
    row-major order, as transformers' ``sparse_prediction=True``).
    ``num_correct`` / ``num_labelled`` (with labels): int64 scalars, the labelled tokens whose top-1 prediction is
    the target, and the labelled tokens — what the accuracy metric needs, counted in the loss's own chunk loop.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None = None
    num_correct: torch.Tensor | None = None
    num_labelled: torch.Tensor | None = None

    def __getitem__(self, key: str):  # dict-style access, like transformers' ModelOutput
        return getattr(self, key)


# FSDP2 finds the tensors of a module's output with torch's pytree to hook its backward (the root's hook queues
# the final gradient reduce-scatter); an unregistered dataclass is an opaque leaf, and then the sharded
# parameters never receive their gradients. Registering it makes `loss` and `logits` visible.
pytree.register_dataclass(MaskedLMOutput)


def _layer_norm(config: ModelConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)


class MMBertEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.norm = _layer_norm(config)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class MMBertAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.is_global = config.is_global_layer(layer_id)
        self.window_half = -1 if self.is_global else config.window_half
        self.attention_dropout = config.attention_dropout
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_drop = nn.Dropout(config.attn_out_dropout)

    def forward(self, x: torch.Tensor, rope, attn_inputs, backend: str) -> torch.Tensor:
        """``rope``: (cos, sin) tables; ``attn_inputs``: what the backend's ``prepare`` built for this layer's
        window (host side, once per batch)."""
        num_tokens = x.shape[0]
        qkv = self.Wqkv(x).view(num_tokens, 3, self.num_heads, self.head_dim)
        cos, sin = (t.to(qkv.dtype) for t in rope)  # under autocast qkv is bf16 while the tables are fp32
        q, k = apply_rotary(qkv[:, :2], cos, sin).unbind(dim=1)  # one rotation for queries and keys together
        dropout_p = self.attention_dropout if self.training else 0.0
        out = ATTENTION_BACKENDS[backend].run(q, k, qkv[:, 2], attn_inputs, self.window_half, dropout_p)
        return self.out_drop(self.Wo(out.reshape(num_tokens, -1)))


class MMBertMLP(nn.Module):
    """GeGLU: ``Wo(drop(gelu(a) * g))`` with ``a, g = Wi(x).chunk(2)`` (gelu on the first half, exact GELU)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.drop(F.gelu(inp) * gate))


class MMBertEncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        # Layer 0 needs no attention pre-norm: the embedding norm right before it plays that role.
        self.attn_norm = nn.Identity() if layer_id == 0 else _layer_norm(config)
        self.attn = MMBertAttention(config, layer_id)
        self.mlp_norm = _layer_norm(config)
        self.mlp = MMBertMLP(config)

    def forward(self, x: torch.Tensor, rope, attn_inputs, backend: str) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, attn_inputs, backend)
        return x + self.mlp(self.mlp_norm(x))


class MMBertModel(nn.Module):
    """Embeddings + encoder layers + final norm, on a flat stream of real tokens."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = MMBertEmbeddings(config)
        self.layers = nn.ModuleList(MMBertEncoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = _layer_norm(config)

    def forward(self, input_ids: torch.Tensor, layout: TokenLayout, backend: str) -> torch.Tensor:
        """Host-side work first, once per batch (RoPE tables, the attention backend's index tensors / masks per
        window), then the layers' tensor work (the regions `compile_regions` compiles)."""
        c = self.config
        dynamic = getattr(self, "regions_compiled", False) and not torch.compiler.is_compiling()
        impl = ATTENTION_BACKENDS[backend]
        attn_inputs = {w: impl.prepare(layout, w) for w in {layer.attn.window_half for layer in self.layers}}
        x = self.embeddings(mark_dynamic(input_ids) if dynamic else input_ids)
        ropes = {}
        for theta in {c.global_rope_theta, c.local_rope_theta}:
            ropes[theta] = rotary_cos_sin(layout.position_ids, c.head_dim, theta, x.dtype)
        for layer in self.layers:  # compiled layers mark their inputs dynamic themselves (compile_regions)
            theta = c.global_rope_theta if layer.attn.is_global else c.local_rope_theta
            x = layer(x, ropes[theta], attn_inputs[layer.attn.window_half], backend)
        return self.final_norm(mark_dynamic(x) if dynamic else x)


def mark_dynamic(tree):
    """Mark dim 0 of every tensor in ``tree`` dynamic for torch.compile (the token, document, masked-token and
    index counts change with every batch): no recompilation when they do. Sizes 0 and 1 stay specialised."""
    for leaf in pytree.tree_leaves(tree):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            torch._dynamo.maybe_mark_dynamic(leaf, 0)
    return tree


class MMBertPredictionHead(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.norm = _layer_norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))


class MMBertDecoder(nn.Module):
    """Holds only the decoder bias: the decoder weight is the token embedding matrix (weight tying)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))


class MMBertForMaskedLM(nn.Module):
    """Masked-LM encoder; see `forward` for the accepted batch forms."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = MMBertModel(config)
        self.head = MMBertPredictionHead(config)
        self.decoder = MMBertDecoder(config)
        self.reset_parameters()

    # ---- init ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ModernBERT's ``full_megatron`` init: truncated normal N(0, std) cut at ``cutoff * std``.

        ``std = initializer_range`` for embeddings, Wqkv, Wi and the head's dense layer; the two projections that
        write into the residual stream (attention Wo and MLP Wo) use ``std / sqrt(2 * num_hidden_layers)``.
        Norm weights are 1 and the decoder bias 0.
        """
        c = self.config

        def trunc(weight: torch.Tensor, std: float) -> None:
            cut = c.initializer_cutoff_factor * std
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-cut, b=cut)

        out_std = output_projection_std(c)
        trunc(self.model.embeddings.tok_embeddings.weight, c.initializer_range)
        for layer in self.model.layers:
            trunc(layer.attn.Wqkv.weight, c.initializer_range)
            trunc(layer.attn.Wo.weight, out_std)
            trunc(layer.mlp.Wi.weight, c.initializer_range)
            trunc(layer.mlp.Wo.weight, out_std)
        trunc(self.head.dense.weight, c.initializer_range)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
        nn.init.zeros_(self.decoder.bias)

    # ---- forward ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.decoder.bias.device

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        """MLM head + tied decoder: ``(..., hidden) -> (..., vocab)``."""
        return F.linear(self.head(hidden), self.model.embeddings.tok_embeddings.weight, self.decoder.bias)

    def masked_lm_loss(self, hidden, index, targets, compute_dtype: torch.dtype | None = None):
        """``(loss_sum, num_correct)`` of the labelled tokens ``hidden[index]`` (head + chunked tied decoder)."""
        return linear_cross_entropy(
            self.head(hidden[index]),
            self.model.embeddings.tok_embeddings.weight,
            self.decoder.bias,
            targets,
            self.config.loss_chunk_size,
            compute_dtype,
            getattr(self, "loss_compile_backend", ""),
        )

    def _check_ids(self, batch: FlatBatch) -> None:
        c = self.config
        if batch.layout.num_tokens == 0:
            raise ValueError("the batch holds no real token (attention_mask / cu_seqlens select nothing)")
        if batch.layout.max_seqlen > c.max_position_embeddings:
            raise ValueError(
                f"a document of {batch.layout.max_seqlen} tokens is longer than max_position_embeddings "
                f"({c.max_position_embeddings})"
            )
        if batch.input_ids.numel():
            lo, hi = torch.aminmax(batch.input_ids)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= c.vocab_size:
                bad = hi if hi >= c.vocab_size else lo
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {c.vocab_size})")

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        doc_lens: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> tuple[torch.Tensor, FlatBatch]:
        """Final hidden states of the real tokens, ``(num_tokens, hidden)``, and the flattened batch."""
        batch = flatten_batch(input_ids, attention_mask, labels, doc_lens, cu_seqlens, max_seqlen)
        self._check_ids(batch)
        backend = resolve_backend(self.config.attn_backend, input_ids.device)
        if torch.is_grad_enabled() and self.decoder.bias.requires_grad:
            check_trainable(backend, input_ids.device)
        return self.model(batch.input_ids, batch.layout, backend), batch

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        doc_lens: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        return_logits: bool = False,
    ) -> MaskedLMOutput:
        """Run the encoder on one of three batch forms (Contract 1 in docs/architecture.md).

        1. padded: ``input_ids (B, L)``, ``attention_mask (B, L)`` (right padding, one document per row);
        2. packed rows: the same plus ``doc_lens (B, D)`` int32, the lengths of the documents packed left to right
           into each row (zero-padded);
        3. flat: ``input_ids (T,)`` and ``cu_seqlens (n_docs + 1,)`` (+ optional ``max_seqlen``).

        Positions restart at 0 in every document and no token attends across a document boundary. Without
        ``labels`` the logits cover every input position (zeros at padding). With ``labels`` (-100 = ignore), the
        head runs only on labelled tokens and ``loss`` is their mean cross-entropy (0, still attached to the graph,
        when nothing is labelled), with ``num_correct`` / ``num_labelled``; the loss is computed in chunks of
        ``config.loss_chunk_size`` labelled tokens (`mlm_loss.linear_cross_entropy`) and ``logits`` is None, unless
        ``return_logits=True``: then ``logits`` is ``(n_labelled, vocab)`` and the loss the plain cross-entropy.
        """
        hidden, batch = self.encode(
            input_ids,
            attention_mask,
            labels=labels,
            doc_lens=doc_lens,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
        )
        if labels is not None:
            # Host side: which tokens are labelled (a data-dependent size, kept out of compiled code).
            index = (batch.labels != IGNORE_INDEX).nonzero().flatten()
            targets = batch.labels[index]
            num_labelled = torch.tensor(index.numel(), device=hidden.device)
            if return_logits:
                logits = self.decode(hidden[index])
                if targets.numel():
                    loss = F.cross_entropy(logits.float(), targets)
                else:
                    loss = logits.sum() * 0.0
                correct = (logits.argmax(dim=-1) == targets).sum()
                return MaskedLMOutput(loss, logits, correct, num_labelled)
            device_type = hidden.device.type
            dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
            if getattr(self, "regions_compiled", False) and not torch.compiler.is_compiling():
                mark_dynamic((index, targets))
            loss_sum, correct = self.masked_lm_loss(hidden, index, targets, dtype)
            loss = loss_sum / max(index.numel(), 1)
            return MaskedLMOutput(loss, None, correct, num_labelled)
        if batch.scatter is None:
            return MaskedLMOutput(loss=None, logits=self.decode(hidden).view(*batch.grid_shape, -1))
        if not torch.is_grad_enabled() and not torch.is_autocast_enabled(hidden.device.type):
            return MaskedLMOutput(loss=None, logits=self._decode_into_grid(hidden, batch))
        logits = self.decode(hidden)
        full = logits.new_zeros(math.prod(batch.grid_shape), logits.shape[-1])
        full[batch.scatter] = logits
        return MaskedLMOutput(loss=None, logits=full.view(*batch.grid_shape, -1))

    def _decode_into_grid(self, hidden: torch.Tensor, batch: FlatBatch) -> torch.Tensor:
        """Inference: write each row's logits straight into the padded output (rows are right-padded prefixes),
        instead of computing them flat and copying the whole (tokens, vocab) block into a zeroed grid."""
        head = self.head(hidden)
        weight = self.model.embeddings.tok_embeddings.weight
        bias = self.decoder.bias
        rows, width = batch.grid_shape
        full = head.new_empty(rows, width, weight.shape[0], dtype=torch.result_type(head, weight))
        start = 0
        for row, count in enumerate(batch.row_tokens):
            if count:
                torch.addmm(bias, head[start : start + count], weight.t(), out=full[row, :count])
            full[row, count:] = 0
            start += count
        return full
