"""A³MoE: zero-init start, router shapes, top-B sparsity, gate variants, router gradients, α caching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medbench.methods.a3tune.context import A3Hooks, template_suffix
from medbench.methods.a3tune.moe import (
    KMoELinear,
    MoESpec,
    QMoELinear,
    RoutingState,
    a3moe_state_dict,
    install_a3moe,
    remove_a3moe,
)


def _kmoe(state, experts=8, top_b=2, **kw):
    torch.manual_seed(0)
    module = KMoELinear(nn.Linear(12, 6), 0, state, experts, 4, 8.0, kw.pop("router", "mlp"), 16, top_b=top_b, **kw)
    nn.init.normal_(module.experts_B)
    return module


def test_kmoe_top_b_sparsity_and_gate_variants():
    state = RoutingState()
    x = torch.randn(2, 5, 12)
    module = _kmoe(state)
    gates, probs, chosen = module.gates(x[0])
    assert gates.shape == probs.shape == (5, 8)
    assert ((gates > 0).sum(-1) == 2).all() and (chosen.sum(-1) == 2).all()
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    assert bool((gates.sum(-1) < 1).all())  # paper: top-B gates summed, not renormalised
    renorm = _kmoe(state, gate="renorm")
    assert torch.allclose(renorm.gates(x[0])[0].sum(-1), torch.ones(5))
    ref = _kmoe(state, impl="ref", router="linear")
    g, _, chosen = ref.gates(x[0])
    top_index = (chosen * torch.arange(8)).argmax(-1)
    assert torch.equal(g.argmax(-1), top_index) and torch.equal(g.sum(-1), torch.ones(5))


def test_kmoe_only_touches_image_tokens_and_router_gradients():
    state = RoutingState()
    x = torch.randn(2, 5, 12)
    state.image_mask = torch.tensor([[False, True, True, False, False], [False, False, True, True, False]])
    for kw, router_grad in (({}, True), ({"impl": "ref", "router": "linear"}, False),
                            ({"gate": "renorm", "top_b": 1}, False)):
        module = _kmoe(state, **kw)
        out = module(x)
        base = module.base(x)
        assert torch.equal(out[~state.image_mask], base[~state.image_mask])
        assert not torch.equal(out[state.image_mask], base[state.image_mask])
        out.sum().backward()
        grads = [p.grad for p in module.router.parameters()]
        has = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        assert has == router_grad, kw


def test_qmoe_alpha_shapes_prompt_pooling_and_decode_cache():
    state = RoutingState()
    torch.manual_seed(0)
    module = QMoELinear(nn.Linear(12, 6), 3, state, 4, 4, 8.0, "mlp", 16)
    nn.init.normal_(module.experts_B)
    x = torch.randn(2, 5, 12)
    state.span_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    state.cache_key = 123
    out = module(x)
    alpha = state.alphas[123][3]
    assert alpha.shape == (2, 4) and torch.allclose(alpha.sum(-1), torch.ones(2))
    # α depends only on the prompt span
    y = x.clone()
    y[0, 0] += 5.0
    state.span_mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    module(y)
    assert torch.allclose(state.alphas[123][3], alpha)
    # a decode step reuses the prefill's α of its cache object
    state.span_mask = None
    step = module(x[:, -1:])
    assert torch.allclose(step, out[:, -1:], atol=1e-6)
    state.cache_key = 999
    state.last_alpha.clear()
    with pytest.raises(RuntimeError):
        module(x[:, -1:])


def _logits(backbone, batch):
    with torch.no_grad():
        return backbone.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              pixel_values=batch.pixel_values).logits


def test_zero_init_experts_start_at_base_model(random_backbone):
    from medbench.tasks.phantom import PhantomVQA

    samples = PhantomVQA(n_images={"train": 20, "test": 10}).load("test")[:3]
    batch = random_backbone.encode_prompts(samples, [random_backbone.load_image(s.image_path) for s in samples])
    base = _logits(random_backbone, batch)
    state = RoutingState()
    torch.manual_seed(123)
    created = install_a3moe(random_backbone.model, MoESpec(True, True, 4, 8, 2), state)
    hooks = A3Hooks(random_backbone.image_token_id, template_suffix(random_backbone), state).attach(random_backbone.model)
    try:
        assert len(created) == 2 * random_backbone.text_config.num_hidden_layers
        assert torch.equal(_logits(random_backbone, batch), base)
        sd = a3moe_state_dict(random_backbone.model)
        assert all(not k.endswith("base.weight") for k in sd)
        assert sd["layers.0.k_proj.experts_B"].abs().sum() == 0
        for module in created:  # nonzero experts change the output
            nn.init.normal_(module.experts_B, std=0.05)
        assert not torch.equal(_logits(random_backbone, batch), base)
    finally:
        hooks.detach()
        remove_a3moe(random_backbone.model)
    assert torch.equal(_logits(random_backbone, batch), base)


def test_prefill_alpha_equals_training_alpha(random_backbone):
    """Q-MoE α from a left-padded prompt equals α from the right-padded prompt+answer training row."""
    from medbench.tasks.phantom import PhantomVQA
    from medbench.training import training_batch

    samples = PhantomVQA(n_images={"train": 20, "test": 10}).load("test")[:3]
    images = [random_backbone.load_image(s.image_path) for s in samples]
    state = RoutingState()
    torch.manual_seed(5)
    install_a3moe(random_backbone.model, MoESpec(True, False, 4, 8, 2), state)
    hooks = A3Hooks(random_backbone.image_token_id, template_suffix(random_backbone), state).attach(random_backbone.model)
    model = random_backbone.model
    try:
        with torch.no_grad():
            train = training_batch(random_backbone, samples, images)
            model(input_ids=train.input_ids, attention_mask=train.attention_mask, pixel_values=train.pixel_values,
                  position_ids=train.position_ids)
            trained = {k: v.clone() for k, v in state.last_alpha.items()}
            batch = random_backbone.encode_prompts(samples, images)
            position = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values,
                  position_ids=position)
        for layer, alpha in state.last_alpha.items():
            assert torch.allclose(alpha, trained[layer], atol=1e-5), layer
    finally:
        hooks.detach()
        remove_a3moe(model)
