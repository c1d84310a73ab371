"""Peak memory of one training step per rank, and the largest microbatch that fits a GPU.

The estimate adds what one rank holds at the moment of its peak, the start of the backward pass of a microbatch
(all activations saved, the MLM head's backward running, the gradients of earlier microbatches present):

    peak = model states + activations + head
    model states = weights + gradients + StableAdamW state (+ FSDP's gathered units / DDP's buckets / autocast's
                   bf16 weight copies)
    activations  = batch tensors + embeddings + sum over layers of the tensors autograd saves + final norm
    head         = tensors the MLM head saves + the (tokens x vocab) blocks alive while its backward runs

or, when larger, the optimizer step (model states + the step's temporaries). Every term counts bytes of tensors,
as this repository's encoder creates them (`mmbert_train.model.modeling` / ``attention``), in eager mode.
torch.compile (inductor) fuses element-wise work and usually saves less, so the estimate is an upper bound there.

Model states, for P parameters (the tied decoder counted once), world size W, with fp32 master weights:

    no parallelism: 4P weights + 4P gradients + 8P Adam moments (+ 2P bf16 copies under autocast)
    DDP:            as above + 4P gradient buckets
    FSDP FULL_SHARD (and FSDP2): (4 + 4 + 8) P / W + the gathered units: the root unit (embeddings, head, decoder
                    bias) and two encoder layers (the current one + the prefetched one), each as weights and
                    gradients in FSDP's parameter dtype plus the fp32 reduce buffer of the gradients
    SHARD_GRAD_OP:  weights stay gathered between forward and backward: P in the parameter dtype + (4 + 8) P / W
    HYBRID_SHARD:   FULL_SHARD within a node of 8 ranks

Activations per token and layer, in elements of the residual stream's dtype ``r`` (fp32: LayerNorm computes in
fp32 also under autocast, so the residual stream is fp32) and of the compute dtype ``c`` (bf16 under autocast):

    r * (2h + 4)                       layer input and attention output summed into the residual; LayerNorm stats
    c * (3h + 4i)                      norm outputs (Wqkv / Wi inputs), Wo input; GeGLU: Wi output (2i), gelu(a)
                                       (i), gelu(a) * g (i)
    attention (per backend, below); 1 byte * h per dropout mask where a dropout is active

    flash:  the fused qkv (3h, v is a view of it) + the rotated q, k (2h) + log-sum-exp (heads, fp32)
    flex:   padded q, k, v (3h) + the kernel's output (h) + log-sum-exp
    sdpa:   global layers (and local layers on documents up to 4 x window/2): q, k, v gathered per bucket of
            similar lengths + output (4h); local layers on longer documents (block-local): queries (h) + the 3
            key blocks of keys and values (6h) + output (h) = 8h
    eager:  q, k, v rectangles (3h) + the softmax probabilities (heads x longest document, fp32)

The head runs on the ``M`` masked tokens: it saves ``4 M h`` (dense input, its output, gelu, norm output). With the
plain loss the logits ``(M, V)`` stay alive (Composer keeps the outputs for the metrics) next to the fp32
log-softmax autograd saves, and the backward adds the fp32 gradients of both: ``M V (c + 3 r)`` bytes
(``r`` = 4). The chunked loss (`mmbert_train.model.mlm_loss`) computes its gradients inside the forward chunk loop:
it holds one chunk of ``C = min(M, chunk)`` rows of logits at a time (``C V (c + r)`` under autocast: logits + their
fp32 copy; ``2 C V r`` in fp32, logits and their softmax), the fp32 accumulator of the embedding-matrix gradient ``V h r`` (under autocast also
a compute-dtype copy of the embeddings and the gradient in that dtype, ``2 V h c``) and the hidden-state gradient
``M h r``, kept from the forward to the backward.

`largest_microbatch` searches the rows per microbatch whose estimate stays within ``memory * (1 - headroom)``;
the headroom (10% by default) covers what is not a tensor of the step: the CUDA context, NCCL buffers, the
caching allocator's fragmentation and torch.compile's workspaces.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

from mmbert_train.model.config import ModelConfig

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_GPU_MEMORY",
    "DEFAULT_HEADROOM",
    "MemoryEstimate",
    "MemoryPlan",
    "StepShape",
    "TrainingSetup",
    "estimate_step_memory",
    "format_bytes",
    "largest_microbatch",
    "model_head",
    "parse_memory",
    "plan_recipe",
    "setup_from_recipe",
]

DEFAULT_GPU_MEMORY = "80GB"
DEFAULT_HEADROOM = 0.10
DEFAULT_CHUNK_SIZE = 4096  # masked tokens per chunk of the chunked MLM loss, when the model does not say
NODE_SIZE = 8  # ranks per node (HYBRID_SHARD shards within a node)
BATCH_BYTES_PER_TOKEN = 8 * 8  # int64 ids, labels, attention mask, positions, document ids, ... per token

Head = Literal["plain", "chunked"]
Backend = Literal["flash", "flex", "sdpa", "eager"]

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1e3,
    "MB": 1e6,
    "GB": 1e9,
    "TB": 1e12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}
_UNITS["TIB"] = 2**40


def parse_memory(text: str | int | float) -> int:
    """``"80GB"`` -> 80e9 bytes, ``"80GiB"`` -> 80 * 2**30; a bare number is bytes. GB = 10^9, GiB = 2^30."""
    if isinstance(text, int | float):
        return int(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(
            f"memory size {text!r}: expected a positive number with a unit, e.g. 80GB (10^9 bytes) or 80GiB (2^30)"
        )
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def format_bytes(n: float) -> str:
    """Bytes in GB (10^9) with two decimals below 10 GB, one above (``12.3 GB``)."""
    gb = n / 1e9
    return f"{gb:.2f} GB" if abs(gb) < 10 else f"{gb:.1f} GB"


# ---------------------------------------------------------------------------------------------- the setup


@dataclass(frozen=True)
class TrainingSetup:
    """How a rank trains: precision, parallelism, attention backend, loss head."""

    precision: Literal["fp32", "amp_bf16", "amp_fp16"] = "fp32"
    parallelism: Literal["none", "ddp", "fsdp"] = "none"
    world_size: int = 1
    sharding_strategy: str = "FULL_SHARD"  # FSDP: FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD
    mixed_precision: str = "DEFAULT"  # FSDP: DEFAULT / PURE (bf16 gathered weights), FULL (fp32)
    activation_checkpointing: bool = False
    backend: Backend = "sdpa"
    head: Head = "chunked"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    training: bool = True  # dropout masks are saved only in training

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if self.backend not in ("flash", "flex", "sdpa", "eager"):
            raise ValueError(f"backend {self.backend!r} is not one of flash, flex, sdpa, eager")
        if self.head not in ("plain", "chunked"):
            raise ValueError(f"head {self.head!r} is not 'plain' or 'chunked'")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def compute_bytes(self) -> int:
        return 4 if self.precision == "fp32" else 2

    @property
    def sharded(self) -> bool:
        return self.parallelism == "fsdp" and self.world_size > 1 and self.sharding_strategy != "NO_SHARD"


@dataclass(frozen=True)
class StepShape:
    """One microbatch: ``tokens`` real tokens in ``rows`` packed rows, ``masked`` of them labelled.

    ``doc_len`` is the longest document (attention rectangles, block-local vs bucketed sdpa); packed pre-training
    rows hold whole rows of it at most. ``bucket_padding`` is the sdpa buckets' padded / real tokens (1 when every
    document of a bucket has the same length; documents within a factor 1.6 share a bucket).
    """

    tokens: int
    masked: int
    doc_len: int
    rows: int = 1
    bucket_padding: float = 1.0

    @classmethod
    def packed(cls, rows: int, seq_len: int, mask_ratio: float) -> StepShape:
        """Full packed rows (the loader fills rows to ~99%), ``mask_ratio`` of the tokens labelled."""
        tokens = rows * seq_len
        return cls(tokens=tokens, masked=round(tokens * mask_ratio), doc_len=seq_len, rows=rows)

    @classmethod
    def from_batch(cls, batch) -> StepShape:
        """The shape of a real Contract-3 batch (``input_ids``, ``attention_mask``, ``labels``, ``doc_lens``),
        with the sdpa bucket padding its documents get (`mmbert_train.model.layout.document_buckets`)."""
        from mmbert_train.model.layout import document_buckets, flatten_batch

        flat = flatten_batch(
            batch["input_ids"], batch.get("attention_mask"), batch.get("labels"), batch.get("doc_lens")
        )
        layout = flat.layout
        buckets, _ = document_buckets(layout)
        padded = sum(b.gather.numel() for b in buckets)
        masked = int((flat.labels != -100).sum()) if flat.labels is not None else 0
        return cls(
            tokens=layout.num_tokens,
            masked=masked,
            doc_len=layout.max_seqlen,
            rows=int(batch["input_ids"].shape[0]),
            bucket_padding=padded / max(1, layout.num_tokens),
        )


# ------------------------------------------------------------------------------------------- the estimate


@dataclass
class MemoryEstimate:
    """Peak bytes of one rank, term by term (``terms`` in the order printed)."""

    terms: dict[str, float]
    optimizer_step_peak: float  # model states + the optimizer step's temporaries
    notes: list[str] = field(default_factory=list)

    @property
    def step_peak(self) -> float:
        return sum(self.terms.values())

    @property
    def peak(self) -> float:
        return max(self.step_peak, self.optimizer_step_peak)

    @property
    def dominant(self) -> str:
        return max(self.terms, key=self.terms.__getitem__)

    def format(self) -> str:
        width = max(len(k) for k in self.terms)
        lines = [f"  {name:<{width}}  {format_bytes(value):>10}" for name, value in self.terms.items()]
        lines.append(f"  {'peak':<{width}}  {format_bytes(self.peak):>10}   (dominant: {self.dominant})")
        if self.optimizer_step_peak > self.step_peak:
            lines.append(f"  the optimizer step is the peak ({format_bytes(self.optimizer_step_peak)})")
        return "\n".join(lines)


def _layer_parameters(c: ModelConfig) -> int:
    h, i = c.hidden_size, c.intermediate_size
    return 4 * h * h + 3 * h * i + 2 * h


def _model_states(c: ModelConfig, s: TrainingSetup) -> tuple[dict[str, float], float]:
    """(terms, optimizer-step temporaries) of weights, gradients, optimizer state and the wrappers' copies."""
    p = c.num_parameters()
    largest = c.vocab_size * c.hidden_size  # the token embedding, the largest single tensor
    terms: dict[str, float] = {}
    if s.sharded:
        shards = min(s.world_size, NODE_SIZE) if s.sharding_strategy == "HYBRID_SHARD" else s.world_size
        param_bytes = 4 if s.mixed_precision == "FULL" or s.precision == "fp32" else 2
        terms["weights (fp32 shard)"] = 4 * p / shards
        terms["gradients (fp32 shard)"] = 4 * p / shards
        terms["optimizer state (shard)"] = 8 * p / shards
        root = p - c.num_hidden_layers * _layer_parameters(c)
        if s.sharding_strategy == "SHARD_GRAD_OP":
            gathered = p * param_bytes + (2 * _layer_parameters(c) + root) * (param_bytes + 4)
        else:
            gathered = (root + 2 * _layer_parameters(c)) * (2 * param_bytes + 4)
        terms["FSDP gathered units"] = gathered
        step_temporaries = 2 * 4 * largest / shards
    else:
        terms["weights (fp32)"] = 4 * p
        terms["gradients (fp32)"] = 4 * p
        terms["optimizer state"] = 8 * p  # StableAdamW: exp_avg + exp_avg_sq, fp32
        if s.parallelism in ("ddp", "fsdp") and s.world_size > 1:
            terms["DDP gradient buckets"] = 4 * p
        if s.precision != "fp32":
            terms["autocast weight copies"] = s.compute_bytes * p
        step_temporaries = 2 * 4 * largest  # the for-loop step's temporaries of the largest tensor
    model_states = sum(terms.values()) - terms.get("autocast weight copies", 0.0)
    return terms, model_states + step_temporaries


def _attention_elements(
    c: ModelConfig, s: TrainingSetup, shape: StepShape, is_global: bool
) -> tuple[float, float]:
    """(compute-dtype, fp32) elements per token that the attention backend saves in one layer."""
    h, heads = c.hidden_size, c.num_attention_heads
    lse = heads * (1.0 if s.backend != "eager" else 0.0)
    if s.backend == "flash":
        return 5.0 * h, lse
    if s.backend == "flex":
        return 4.0 * h, lse
    if s.backend == "eager":
        return 3.0 * h * shape.bucket_padding, heads * float(shape.doc_len)
    # sdpa (one custom op for buckets and block-local windows) saves only q, k and v for its backward and
    # re-gathers / recomputes the rest there
    return 3.0 * h, 0.0


def _activations(c: ModelConfig, s: TrainingSetup, shape: StepShape) -> dict[str, float]:
    h, i, d = c.hidden_size, c.intermediate_size, c.head_dim
    r, cb = 4, s.compute_bytes
    t = float(shape.tokens)
    mixed = cb != r
    dropout_mask = 1.0 * h if (s.training and c.attn_out_dropout > 0) else 0.0
    dropout_mask += 1.0 * i if (s.training and c.mlp_dropout > 0) else 0.0
    layers = 0.0
    for layer in range(c.num_hidden_layers):
        compute = 3.0 * h + 4.0 * i
        if layer == 0 and not mixed:
            compute -= h  # no attention norm: Wqkv saves the layer input itself
        if mixed:
            compute += 2.0 * d  # the RoPE tables cast to bf16 per layer
        attn_c, attn_r = _attention_elements(c, s, shape, c.is_global_layer(layer))
        per_token = r * (2.0 * h + 4.0 + attn_r) + cb * (compute + attn_c) + dropout_mask
        layers += t * per_token
    if s.activation_checkpointing:
        # only each layer's input is kept; one layer's activations are rebuilt at a time
        layers = t * r * h * c.num_hidden_layers + layers / c.num_hidden_layers
    thetas = len({c.global_rope_theta, c.local_rope_theta})
    other = t * (
        BATCH_BYTES_PER_TOKEN + r * (2.0 * h + 4.0) + r * 2.0 * d * thetas
    )  # ids, embeddings, final norm
    return {"activations (layers)": layers, "activations (embeddings, final norm, batch)": other}


def _head(c: ModelConfig, s: TrainingSetup, shape: StepShape) -> dict[str, float]:
    m, v, h = float(shape.masked), float(c.vocab_size), c.hidden_size
    r, cb = 4, s.compute_bytes
    saved = m * (cb * 4.0 * h + r * 4.0)
    if s.head == "plain":
        logits = m * v * (cb + 3.0 * r)
        return {"head activations": saved, "head logits (plain loss)": logits}
    # one chunk of logits at a time (compute dtype + fp32 copy; in fp32 one tensor), and the gradients the forward
    # loop computes and keeps for the backward: the fp32 embedding-gradient accumulator, under autocast a
    # compute-dtype copy of the embeddings and the gradient in that dtype, and the hidden-state gradient
    logits = min(m, float(s.chunk_size)) * v * (cb + r if cb != r else 2.0 * r)  # + the chunk's fp32 softmax
    buffers = v * h * r + (2.0 * v * h * cb if cb != r else 0.0) + m * h * r
    return {
        "head activations": saved,
        f"head logits (chunks of {s.chunk_size})": logits,
        "head gradient buffers (chunked loss)": buffers,
    }


def estimate_step_memory(config: ModelConfig, shape: StepShape, setup: TrainingSetup) -> MemoryEstimate:
    """Peak bytes of one rank for one training step on microbatch ``shape`` (see the module docstring)."""
    terms, optimizer_step_peak = _model_states(config, setup)
    terms.update(_activations(config, setup, shape))
    terms.update(_head(config, setup, shape))
    notes = []
    if setup.parallelism == "fsdp" and setup.sharding_strategy == "NO_SHARD":
        notes.append("FSDP NO_SHARD holds model states like DDP")
    return MemoryEstimate(terms=terms, optimizer_step_peak=optimizer_step_peak, notes=notes)


# ------------------------------------------------------------------------------------------------- planning


@dataclass
class MemoryPlan:
    """The estimate at a recipe's microbatch and the largest microbatch that fits ``memory`` with ``headroom``."""

    name: str
    seq_len: int
    microbatch: int
    memory: int
    headroom: float
    setup: TrainingSetup
    estimate: MemoryEstimate
    max_microbatch: int  # 0: not even one row fits

    @property
    def budget(self) -> float:
        return self.memory * (1.0 - self.headroom)

    @property
    def fits(self) -> bool:
        return self.estimate.peak <= self.budget

    def format(self) -> str:
        s = self.setup
        parallel = (
            s.parallelism if s.parallelism != "fsdp" else f"fsdp {s.sharding_strategy} ({s.mixed_precision})"
        )
        head = "plain loss" if s.head == "plain" else f"chunked loss, {s.chunk_size} tokens per chunk"
        lines = [
            f"{self.name}: microbatch {self.microbatch} x {self.seq_len} tokens per rank, world size "
            f"{s.world_size}, {parallel}, {s.precision}, attention {s.backend}, {head}",
            self.estimate.format(),
            f"  budget: {format_bytes(self.memory)} - {self.headroom:.0%} headroom = {format_bytes(self.budget)}: "
            + ("fits" if self.fits else "DOES NOT FIT"),
            f"  largest microbatch that fits: {self.max_microbatch}",
        ]
        return "\n".join(lines)


def largest_microbatch(
    config: ModelConfig,
    setup: TrainingSetup,
    *,
    seq_len: int,
    mask_ratio: float,
    memory: int,
    headroom: float = DEFAULT_HEADROOM,
    limit: int = 1 << 16,
) -> int:
    """The most packed rows of ``seq_len`` tokens per microbatch whose estimate fits ``memory * (1 - headroom)``
    (0 if not even one row does). The estimate grows with the rows, so a binary search finds it."""
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    budget = memory * (1.0 - headroom)

    def fits(rows: int) -> bool:
        return estimate_step_memory(config, StepShape.packed(rows, seq_len, mask_ratio), setup).peak <= budget

    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def model_head(config: ModelConfig) -> Head:
    """The MLM loss the model computes in training: chunked when it has a ``loss_chunk_size``, else plain."""
    return "chunked" if getattr(config, "loss_chunk_size", None) else "plain"


def setup_from_recipe(recipe, world_size: int, *, head: Head | None = None, backend: Backend | None = None):
    """The `TrainingSetup` a recipe runs with on ``world_size`` GPUs (precision auto = amp_bf16 on a GPU;
    attention auto = flash, the backend of the paper's runs; head None = the model's own, `model_head`)."""
    trainer = recipe.trainer
    model = recipe.model_config
    precision = "amp_bf16" if trainer.precision == "auto" else trainer.precision
    parallelism = {"auto": "ddp", "ddp": "ddp", "fsdp": "fsdp"}[trainer.parallelism]
    if world_size == 1:
        parallelism = "none"
    if backend is None:
        backend = "flash" if model.attn_backend == "auto" else model.attn_backend
    chunk = getattr(model, "loss_chunk_size", None) or DEFAULT_CHUNK_SIZE
    head = head or model_head(model)
    return TrainingSetup(
        precision=precision,
        parallelism=parallelism,
        world_size=world_size,
        sharding_strategy=trainer.fsdp.sharding_strategy,
        mixed_precision=trainer.fsdp.mixed_precision,
        activation_checkpointing=trainer.fsdp.activation_checkpointing and parallelism == "fsdp",
        backend=backend,
        head=head,
        chunk_size=int(chunk),
    )


def plan_recipe(
    recipe,
    *,
    memory: int | str | None = None,
    world_size: int = 8,
    headroom: float = DEFAULT_HEADROOM,
    head: Head | None = None,
    backend: Backend | None = None,
) -> MemoryPlan:
    """Estimate a recipe's peak at its ``trainer.device_microbatch_size`` (None: the whole per-rank batch) on
    ``world_size`` GPUs of ``memory`` bytes (default: the recipe's ``trainer.gpu_memory``, else 80GB)."""
    if memory is None:
        memory = getattr(recipe.trainer, "gpu_memory", None) or DEFAULT_GPU_MEMORY
    memory = parse_memory(memory)
    setup = setup_from_recipe(recipe, world_size, head=head, backend=backend)
    config = recipe.model_config
    seq_len = recipe.data.max_seq_len
    per_rank = max(1, recipe.trainer.global_batch_size // world_size)
    micro = recipe.trainer.device_microbatch_size or per_rank
    estimate = estimate_step_memory(config, StepShape.packed(micro, seq_len, recipe.data.mask_ratio), setup)
    best = largest_microbatch(
        config, setup, seq_len=seq_len, mask_ratio=recipe.data.mask_ratio, memory=memory, headroom=headroom
    )
    return MemoryPlan(
        name=recipe.name,
        seq_len=seq_len,
        microbatch=micro,
        memory=memory,
        headroom=headroom,
        setup=setup,
        estimate=estimate,
        max_microbatch=min(best, per_rank),
    )


def replace_setup(setup: TrainingSetup, **changes) -> TrainingSetup:
    """A copy of ``setup`` with ``changes`` (dataclasses.replace, re-validated)."""
    return dataclasses.replace(setup, **changes)
