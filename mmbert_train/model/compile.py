"""Regional torch.compile: the repeated tensor work of the encoder, compiled in place, host-side work left eager.

`compile_regions(model, **torch_compile_kwargs)` compiles

- each encoder layer's ``forward`` (norms, Wqkv, RoPE, the attention call, Wo, GeGLU MLP): ONE compiled function
  shared by all layers, so torch.compile builds one graph per kind of layer (global, local, and layer 0 whose
  attention norm is the identity), not one per layer;
- the embeddings (lookup + norm + dropout), the final norm, and the head + chunked loss
  (`MMBertForMaskedLM.masked_lm_loss`).

What stays outside, done once per batch in eager Python: flattening the batch into a `TokenLayout` (cu_seqlens,
max_seqlen, document buckets, block-local indices, masks, FlexAttention's block mask), the id checks, the RoPE
tables and the selection of the labelled tokens. Their tensors enter the compiled regions as inputs whose first
dimension is marked dynamic (`modeling.mark_dynamic`; each layer's inputs in a forward pre-hook that runs after
FSDP2's), so batches with other token, document or masked-token counts reuse the same graphs instead of
recompiling.

Nothing is wrapped or replaced: each compiled function is bound as the module instance's ``forward``, so
``state_dict()`` keys are unchanged (no ``_orig_mod.``), module hooks (FSDP2's all-gather / reshard, activation
checkpointing wrappers) run eagerly around the compiled forward, and the module classes stay what they are.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from .modeling import MMBertEmbeddings, MMBertEncoderLayer, MMBertForMaskedLM, mark_dynamic


def _bind(module: nn.Module, name: str, compiled) -> None:
    setattr(module, name, types.MethodType(compiled, module))


def _mark_inputs_dynamic(module: nn.Module, args: tuple, kwargs: dict) -> None:
    if not torch.compiler.is_compiling():
        mark_dynamic((args, kwargs))


def compile_regions(model: MMBertForMaskedLM, **torch_compile_kwargs: Any) -> MMBertForMaskedLM:
    """Compile ``model``'s regions in place (see the module docstring); returns ``model``.

    ``torch_compile_kwargs`` go to every ``torch.compile`` call (``backend``, ``mode``, ``options``, ...).
    """
    if not isinstance(model, MMBertForMaskedLM):
        raise TypeError(f"compile_regions expects an MMBertForMaskedLM, got {type(model).__name__}")
    kwargs = dict(torch_compile_kwargs)
    layer_forward = torch.compile(MMBertEncoderLayer.forward, **kwargs)
    for layer in model.model.layers:
        _bind(layer, "forward", layer_forward)
        # Marked in a forward pre-hook, not by the caller: FSDP2's own pre-hook (prepended, so it runs first)
        # hands the layer new tensors for its post-backward hook, which would not carry the caller's marks.
        layer.register_forward_pre_hook(_mark_inputs_dynamic, with_kwargs=True)
    _bind(model.model.embeddings, "forward", torch.compile(MMBertEmbeddings.forward, **kwargs))
    _bind(model.model.final_norm, "forward", torch.compile(type(model.model.final_norm).forward, **kwargs))
    _bind(model, "masked_lm_loss", torch.compile(MMBertForMaskedLM.masked_lm_loss, **kwargs))
    # The loss op's chunk loop stays opaque (its length depends on the batch); each chunk's softmax gradient is
    # compiled inside it with the same backend when that is named by string (inductor by default).
    backend = kwargs.get("backend", "inductor")
    model.loss_compile_backend = backend if isinstance(backend, str) else "inductor"
    model.regions_compiled = True
    model.model.regions_compiled = True
    return model
