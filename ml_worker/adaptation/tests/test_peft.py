"""PEFT methods: what each opens, adapter state round trips, merge reproduces outputs, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ml_worker.adaptation.peft import (
    METHODS,
    AdapterError,
    LoRAConv,
    LoRALinear,
    adapter_state,
    count_trainable,
    get_method,
    load_adapter_state,
    merge,
    model_kind,
    set_train_mode,
    trainable_parameters,
)
from ml_worker.models.litemedsam import LiteMedSAM
from ml_worker.models.native3d import build_native3d


def _native(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_native3d(num_classes=2, init_filters=8, dropout=0.0).eval()


@pytest.fixture(scope="module")
def sam() -> LiteMedSAM:
    """An untrained LiteMedSAM (random weights: these tests are about structure, not accuracy)."""
    torch.manual_seed(0)
    return LiteMedSAM().eval()


def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Move every trainable parameter, as training would (LoRA's B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_registry_has_the_methods_of_the_issue():
    assert set(METHODS["native3d"]) == {"full", "lora_conv", "norm", "decoder", "linear_probe"}
    assert set(METHODS["litemedsam"]) == {"encoder_lora", "decoder", "decoder_lora", "bitfit", "layernorm"}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("full", lambda n: True),
        ("norm", lambda n: ".norm" in n or n.startswith("conv_final.0.")),
        ("decoder", lambda n: n.startswith(("up_samples.", "up_layers.", "conv_final."))),
        ("linear_probe", lambda n: n.startswith("conv_final.2.conv.")),
        ("lora_conv", lambda n: n.endswith(("lora_A", "lora_B"))),
    ],
)
def test_native3d_methods_open_exactly_their_parameters(name, expected):
    net = get_method("native3d", name).apply(_native())
    names = [n for n, _ in net.named_parameters()]
    trainable = set(trainable_parameters(net))
    assert trainable == {n for n in names if expected(n)}
    assert 0 < count_trainable(net) <= sum(p.numel() for p in net.parameters())


def test_lora_conv_leaves_1x1x1_convs_out():
    net = get_method("native3d", "lora_conv").apply(_native())
    wrapped = [m for m in net.modules() if isinstance(m, LoRAConv)]
    assert len(wrapped) == 28  # every 3x3x3 conv of the SegResNet, the 3 strided ones included
    assert all(w.base.kernel_size == (3, 3, 3) for w in wrapped)
    assert isinstance(net.conv_final[2].conv, nn.Conv3d)
    assert all(isinstance(up[0].conv, nn.Conv3d) for up in net.up_samples)


def test_lora_starts_at_the_base_and_trains_only_a_and_b():
    base = _native()
    x = torch.rand(1, base.convInit.conv.in_channels, 16, 16, 16)
    expected = base(x)
    net = get_method("native3d", "lora_conv").apply(copy.deepcopy(base))
    assert torch.allclose(net(x), expected, atol=1e-6)
    net.train()
    net(x).sum().backward()
    for n, p in net.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n


@pytest.mark.parametrize("name", sorted(METHODS["native3d"]))
def test_native3d_adapter_state_round_trip_and_merge(name):
    base = _native()
    method = get_method("native3d", name)
    adapted = method.apply(copy.deepcopy(base))
    _perturb(adapted)
    x = torch.rand(2, base.convInit.conv.in_channels, 16, 16, 16)
    with torch.no_grad():
        expected = adapted(x)
        assert not torch.allclose(expected, base(x), atol=1e-4)

    state = adapter_state(adapted)
    assert set(state) == set(trainable_parameters(adapted))
    reloaded = load_adapter_state(method.apply(copy.deepcopy(base)), state)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), expected, atol=1e-6)

    merged = merge(reloaded)
    assert not any(isinstance(m, LoRAConv) for m in merged.modules())
    assert set(merged.state_dict()) == set(base.state_dict())  # saves like a base checkpoint
    with torch.no_grad():
        assert torch.allclose(merged(x), expected, atol=1e-5)


def test_load_adapter_state_names_what_does_not_fit():
    adapted = get_method("native3d", "norm").apply(_native())
    state = adapter_state(adapted)
    first = next(iter(state))
    state.pop(first)
    state["bogus.weight"] = torch.zeros(3)
    second = list(state)[0]
    state[second] = torch.zeros(5, 5)
    with pytest.raises(AdapterError) as err:
        load_adapter_state(get_method("native3d", "norm").apply(_native()), state)
    message = str(err.value)
    assert f"missing: {first}" in message
    assert "unexpected: bogus.weight" in message
    assert f"shape: {second}" in message and "(5, 5)" in message


def test_an_adapter_of_another_method_does_not_load():
    state = adapter_state(get_method("native3d", "decoder").apply(_native()))
    with pytest.raises(AdapterError, match="same PEFT method"):
        load_adapter_state(get_method("native3d", "linear_probe").apply(_native()), state)


def test_lora_rank_changes_the_adapter_and_is_checked():
    state = adapter_state(get_method("native3d", "lora_conv", rank=2).apply(_native()))
    assert all(v.shape[0] == 2 for k, v in state.items() if k.endswith("lora_A"))
    with pytest.raises(AdapterError, match="shape"):
        load_adapter_state(get_method("native3d", "lora_conv", rank=4).apply(_native()), state)


def test_errors_for_unknown_names_wrong_kind_and_double_apply(sam):
    with pytest.raises(AdapterError, match="known: .*'full'"):
        get_method("native3d", "prefix_tuning")
    with pytest.raises(AdapterError, match="unknown model kind"):
        get_method("vista3d", "full")
    with pytest.raises(AdapterError, match="bad parameters"):
        get_method("native3d", "norm", rank=4)
    with pytest.raises(AdapterError, match="for litemedsam networks, not native3d"):
        get_method("litemedsam", "bitfit").apply(_native())
    with pytest.raises(AdapterError, match="no PEFT methods"):
        model_kind(nn.Linear(2, 2))
    net = get_method("native3d", "lora_conv").apply(_native())
    with pytest.raises(AdapterError, match="already carries LoRA"):
        get_method("native3d", "full").apply(net)
    assert model_kind(sam) == "litemedsam"


def test_lora_linear_merge_is_exact():
    torch.manual_seed(0)
    layer = nn.Linear(12, 6)
    lora = LoRALinear(copy.deepcopy(layer), rank=3, alpha=6.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(4, 12)
    expected = lora(x)
    assert not torch.allclose(expected, layer(x))
    assert torch.allclose(lora.merged()(x), expected, atol=1e-5)


@pytest.mark.parametrize(
    "name, prefixes",
    [
        ("encoder_lora", ("image_encoder.",)),
        ("decoder", ("mask_decoder.",)),
        ("decoder_lora", ("image_encoder.", "mask_decoder.")),
    ],
)
def test_litemedsam_methods_open_their_parts(sam, name, prefixes):
    model = get_method("litemedsam", name).apply(copy.deepcopy(sam))
    trainable = trainable_parameters(model)
    assert trainable and all(n.startswith(prefixes) for n in trainable)
    assert not any(n.startswith("prompt_encoder.") for n in trainable)
    lora = [n for n in trainable if n.endswith(("lora_A", "lora_B"))]
    if "lora" in name:
        assert len(lora) == 2 * 2 * 10  # qkv and proj of the 10 attention blocks, A and B each
        assert all(".attn.qkv." in n or ".attn.proj." in n for n in lora)
    else:
        assert not lora


def test_bitfit_and_layernorm_open_only_biases_and_norms(sam):
    bitfit = trainable_parameters(get_method("litemedsam", "bitfit").apply(copy.deepcopy(sam)))
    assert bitfit and all(n.endswith(".bias") for n in bitfit)
    assert any(n.startswith("image_encoder.") for n in bitfit) and any(
        n.startswith("mask_decoder.") for n in bitfit
    )
    norms = get_method("litemedsam", "layernorm").apply(copy.deepcopy(sam))
    for module_name, module in norms.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            is_norm = type(module).__name__ in ("LayerNorm", "LayerNorm2d")
            assert p.requires_grad == is_norm, f"{module_name}.{p_name}"


def test_litemedsam_encoder_lora_merge_reproduces_outputs(sam):
    model = get_method("litemedsam", "decoder_lora").apply(copy.deepcopy(sam))
    _perturb(model)
    model.eval()
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[60.0, 70.0, 150.0, 160.0]])
    with torch.no_grad():
        embeddings = model.encode(images)
        expected, _ = model.decode(embeddings, boxes=boxes)
        merged = merge(model)
        assert set(merged.state_dict()) == set(sam.state_dict())
        embeddings2 = merged.encode(images)
        got, _ = merged.decode(embeddings2, boxes=boxes)
    assert torch.allclose(embeddings2, embeddings, atol=1e-4)
    assert torch.allclose(got, expected, atol=1e-3)


def test_set_train_mode_keeps_frozen_batchnorm_statistics(sam):
    model = get_method("litemedsam", "decoder").apply(copy.deepcopy(sam))
    set_train_mode(model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.mask_decoder.training
    bitfit = get_method("litemedsam", "bitfit").apply(copy.deepcopy(sam))
    set_train_mode(bitfit)  # BitFit trains BatchNorm biases: those layers train
    assert all(m.training for m in bitfit.modules() if isinstance(m, nn.BatchNorm2d))
