"""Regional compilation: compiled training equals eager, without recompiling on new batch shapes, without graph
breaks, with one graph per kind of layer, and with the state-dict keys untouched."""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch._dynamo
from test_model import randomize_
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from mmbert_train.data.packing import collate_rows
from mmbert_train.model import MMBertForMaskedLM, ModelConfig, compile_regions
from mmbert_train.train.testing import packed_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(**overrides) -> MMBertForMaskedLM:
    # 7 layers: global 0, 3, 6 and local 1, 2, 4, 5 (window 16: every batch below has block-local layers)
    config = ModelConfig.preset(
        "tiny", num_hidden_layers=7, attn_backend="sdpa", loss_chunk_size=64, **overrides
    )
    torch.manual_seed(0)
    model = MMBertForMaskedLM(config).train()
    randomize_(model, 0)
    return model


def compiled_pair(compile_backend: str, train: bool = True, **config):
    """A fresh dynamo state and a tiny model twice: eager, and compiled with `compile_regions` through a counting
    ``compile_backend``. Returns ``(eager, compiled, counter)``; ``counter.frame_count`` counts graphs."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = MMBertForMaskedLM(ModelConfig.preset("tiny", loss_chunk_size=64, **config)).train(train)
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend(compile_backend)
    compile_regions(compiled, backend=counter)
    return eager, compiled, counter


def batch_of_documents(rows: list[list[int]], seq_len: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """A packed batch (the loader's collator) whose rows hold random documents of the given lengths, 30%
    labelled."""
    gen = torch.Generator().manual_seed(seed)
    docs = [[torch.randint(5, vocab, (n,), generator=gen).numpy() for n in lengths] for lengths in rows]
    batch = collate_rows(docs, seq_len)
    picked = (torch.rand(batch["input_ids"].shape, generator=gen) < 0.3) & batch["attention_mask"].bool()
    batch["labels"] = torch.where(picked, batch["input_ids"], -100)
    return batch


def step(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(batch["input_ids"], batch["attention_mask"], batch["labels"], doc_lens=batch["doc_lens"])
    out.loss.backward()
    return out, {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def test_compile_regions_binds_compiled_forwards_in_place():
    model = tiny_model()
    keys = list(model.state_dict())
    classes = [type(m) for m in model.modules()]
    assert compile_regions(model) is model
    assert list(model.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    assert [type(m) for m in model.modules()] == classes  # nothing wrapped or replaced
    layer_forwards = {layer.forward.__func__ for layer in model.model.layers}
    assert len(layer_forwards) == 1  # one compiled function for every layer
    assert isinstance(model.model.embeddings.forward, types.MethodType)
    assert isinstance(model.masked_lm_loss, types.MethodType)
    fresh = tiny_model()
    fresh.load_state_dict(model.state_dict())  # loads both ways, strict
    model.load_state_dict(fresh.state_dict())
    with pytest.raises(TypeError, match="expects an MMBertForMaskedLM"):
        compile_regions(model.model)


@pytest.mark.slow
def test_compiled_training_equals_eager_with_no_recompiles_and_no_graph_breaks():
    """Inductor on CPU. 3 warm-up steps, then 12 steps on packed batches with 1-8 documents per row and other
    token / labelled counts each time: no new graph, no graph break, losses and gradients equal to eager.

    Then batches that give the attention other plans than the warm-up had: every document of one length (the
    global layers' identity plan, no mask), only short documents (bucket plans in the local layers), full
    buckets (no mask in the global layers), one document per row. They reuse the same graphs."""
    torch._dynamo.reset()
    counters.clear()
    eager = tiny_model()
    compiled = copy.deepcopy(eager)
    backend = CompileCounterWithBackend("inductor")
    compile_regions(compiled, backend=backend)
    batches = packed_batches(15, 4, 96, 512, seed=3, max_docs=8)
    assert len({int(b["attention_mask"].sum()) for b in batches}) == 15  # token counts all differ
    assert len({int((b["doc_lens"] > 0).sum()) for b in batches}) > 5  # and so do document counts
    other_plans = [
        [[24] * 4] * 4,
        [[20, 12, 30], [7, 31], [16] * 6, [25]],
        [[30, 30, 12, 12]] * 3,
        [[96]] * 2,
    ]
    batches += [batch_of_documents(rows, 96, 512, seed) for seed, rows in enumerate(other_plans)]
    frames_after_warmup = None
    for i, batch in enumerate(batches):
        out, grads = step(compiled, batch)
        ref, ref_grads = step(eager, batch)
        assert out.logits is None and int(out.num_correct) == int(ref.num_correct)
        assert abs(out.loss.item() - ref.loss.item()) <= 1e-5 * ref.loss.item(), i
        for name, grad in ref_grads.items():
            scale = max(grad.abs().max().item(), 1e-3)
            assert (grads[name] - grad).abs().max().item() <= 1e-5 * scale, (i, name)
        if i == 2:
            frames_after_warmup = backend.frame_count
    assert backend.frame_count == frames_after_warmup  # zero new compilations over the 16 steps
    assert dict(counters["graph_break"]) == {}
    # embeddings, final norm, head + loss, and the 7 layers as 2 graphs: layer 0 (no attention norm) and the rest.
    # With sdpa the attention plan carries the window, so global and local layers share one graph.
    assert frames_after_warmup == 5
    assert list(compiled.state_dict()) == list(eager.state_dict())


def test_trainer_compile_uses_compile_regions_and_flex_fails_before_training(tmp_path, monkeypatch):
    from test_train import make_recipe

    from mmbert_train.model import attention
    from mmbert_train.train.testing import fixed_data_spec
    from mmbert_train.train.trainer import build_trainer

    data = fixed_data_spec(packed_batches(1, 8, 64, 512, seed=1))
    recipe = make_recipe(tmp_path, overrides=["trainer.compile=true"])
    trainer = build_trainer(recipe, train_dataloader=data, loggers=[])
    model = trainer.state.model.model
    assert model.regions_compiled and isinstance(model.model.layers[0].forward, types.MethodType)
    assert not any("_orig_mod" in k for k in trainer.state.model.state_dict())
    assert not trainer.state.is_model_ddp and trainer.state.model.model is model  # not wrapped by Composer

    monkeypatch.setattr(attention, "flex_backward_supported", lambda device_type: False)
    recipe = make_recipe(tmp_path, overrides=["model.attn_backend=flex"])
    with pytest.raises(RuntimeError, match="model.attn_backend='flex' cannot train on cpu"):
        build_trainer(recipe, train_dataloader=data, loggers=[])


@pytest.mark.slow
def test_compiled_flex_layers_stop_compiling_after_the_second_batch():
    """FlexAttention inside the layer regions (the GPU default without flash-attn), traced with aot_eager on CPU
    (inference: FlexAttention's CPU path has no compiled backward): the block mask's mask_mod closes over the
    batch's document ids, padded to a multiple of 128, so the second batch recompiles the layer graphs with that
    length symbolic (automatic dynamic shapes); after that, nothing compiles and nothing breaks the graph. The
    global and local mask_mods are two functions: two layer graphs besides layer 0."""
    reference, model, backend = compiled_pair(
        "aot_eager", train=False, num_hidden_layers=4, attn_backend="flex"
    )
    batches = packed_batches(6, 4, 256, 512, seed=3, max_docs=8)
    padded = [-(-int(b["attention_mask"].sum()) // 128) for b in batches]
    assert padded[0] != padded[1] and len(set(padded)) > 1  # the padded length changes from the 2nd batch on
    frames = []
    with torch.no_grad():
        for batch in batches:
            args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
            out = model(*args, doc_lens=batch["doc_lens"])
            ref = reference(*args, doc_lens=batch["doc_lens"])
            assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
            frames.append(backend.frame_count)
    assert frames[1:] == [frames[1]] * 5 and frames[1] <= 9, frames
    assert dict(counters["graph_break"]) == {}
