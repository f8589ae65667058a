"""LoRA on nn.Conv1d / Conv2d / Conv3d and nn.MultiheadAttention: plain torch models, compared with peft."""

import copy

import peft
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftkit
from peftkit import ConfigError, LoraConfig, get_peft_model
from peftkit.methods.lora.conv import LoraConv
from peftkit.methods.lora.multihead import LoraMultiheadAttention
from tests.conftest import randomize_trainable

DOUBLE = torch.float64


class ConvNet(nn.Module):
    """Conv1d → Conv2d (stride 2) → Conv3d ('same' padding, uneven kernel)."""

    def __init__(self, bias: bool = True, groups: int = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 4, 3, padding=1, bias=bias, groups=groups)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=bias)
        self.c3 = nn.Conv3d(6, 5, (1, 2, 3), padding="same", bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.c1(x))  # N × 4 × L
        y = torch.tanh(self.c2(y[:, :, None, :] * y[:, :, :, None]))  # N × 6 × L/2 × L/2
        return self.c3(torch.stack([y, y.flip(-1), -y], dim=2))  # N × 5 × 3 × L/2 × L/2


class Attention(nn.Module):
    """Self-attention over N × T × 8 inputs, with a batch-first or a sequence-first MultiheadAttention."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.batch_first else x.transpose(0, 1)
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y if self.batch_first else y.transpose(0, 1))


CONV = ["c1", "c2", "c3"]
CASES = {
    "conv": (lambda: ConvNet(), CONV, {}),
    "conv-no-bias": (lambda: ConvNet(bias=False), CONV, {"use_rslora": True}),
    "conv-dora": (lambda: ConvNet(), CONV, {"use_dora": True}),
    "conv-lora-bias": (lambda: ConvNet(), CONV, {"lora_bias": True}),
    "mha-batch-first": (lambda: Attention(True), ["attn"], {}),
    "mha-sequence-first": (lambda: Attention(False), ["attn"], {"init_lora_weights": "gaussian"}),
}


def base_model(case: str) -> nn.Module:
    torch.manual_seed(0)
    return CASES[case][0]().to(DOUBLE).eval()


def inputs(case: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    shape = (2, 5, 8) if case.startswith("mha") else (2, 4, 6)
    return torch.randn(shape, generator=generator, dtype=DOUBLE)


def adapted(case: str, **options) -> peftkit.PeftModel:
    _, targets, extra = CASES[case]
    return get_peft_model(base_model(case), LoraConfig(r=2, lora_alpha=4, target_modules=targets, **extra, **options))


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("case", CASES)
def test_a_new_adapter_leaves_the_output_unchanged(case):
    x = inputs(case)
    model = adapted(case)
    layer_type = LoraMultiheadAttention if case.startswith("mha") else LoraConv
    assert sum(isinstance(m, layer_type) for m in model.modules()) == len(CASES[case][1])
    assert (output(model, x) - output(base_model(case), x)).abs().max() <= 1e-12


@pytest.mark.parametrize("case", CASES)
def test_peft_reads_peftkit_s_adapter_and_peftkit_reads_peft_s(case, tmp_path):
    x = inputs(case)
    ours = adapted(case)
    randomize_trainable(ours, scale=0.3)
    expected = output(ours, x)
    assert (expected - output(base_model(case), x)).abs().max() > 0.05  # the adapter really acts
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(base_model(case), tmp_path / "ours").eval()
    assert (output(theirs, x) - expected).abs().max() <= 1e-5

    _, targets, extra = CASES[case]  # and an adapter made by peft itself
    made = peft.get_peft_model(base_model(case), peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, **extra))
    randomize_trainable(made, seed=7, scale=0.3)
    made.eval()
    made.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(base_model(case), tmp_path / "theirs")
    assert (output(back, x) - output(made, x)).abs().max() <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_merge_and_unload_gives_the_unmerged_output(case):
    x = inputs(case)
    model = adapted(case)
    randomize_trainable(model, scale=0.3)
    expected = output(model, x)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.merge_adapter()
    assert (output(model, x) - expected).abs().max() <= 1e-5
    model.unmerge_adapter()
    assert all((p - weights[n]).abs().max() <= 1e-6 for n, p in model.named_parameters())
    merged = model.merge_and_unload()
    assert not any(isinstance(m, (LoraConv, LoraMultiheadAttention)) for m in merged.modules())
    assert (output(merged, x) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_saved_adapter_loads_with_equal_outputs(case, tmp_path):
    x = inputs(case)
    model = adapted(case)
    randomize_trainable(model, scale=0.3)
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(base_model(case), tmp_path)
    assert (output(loaded, x) - output(model, x)).abs().max() <= 1e-6


@pytest.mark.parametrize("case", CASES)
def test_backward_reaches_every_adapter_tensor_and_no_base_weight(case):
    model = adapted(case)
    randomize_trainable(model, scale=0.3)
    model.train()
    model(inputs(case)).square().mean().backward()
    named = dict(model.named_parameters())
    trained = [n for n, p in named.items() if p.requires_grad]
    assert trained and all(named[n].grad is not None and named[n].grad.abs().max() > 0 for n in trained)
    assert all(p.grad is None for p in named.values() if not p.requires_grad)
    if case.startswith("mha"):  # both projections train: input (lora_*) and output (out_proj_lora_*)
        assert sum("out_proj_lora_" in n for n in trained) == 2 and len(trained) == 4


@pytest.mark.parametrize("case", CASES)
def test_disable_adapter_gives_the_base_output(case):
    x = inputs(case)
    model = adapted(case)
    randomize_trainable(model, scale=0.3)
    with model.disable_adapter():
        assert (output(model, x) - output(base_model(case), x)).abs().max() <= 1e-12
    assert (output(model, x) - output(base_model(case), x)).abs().max() > 0.05


def test_conv_update_is_the_composed_kernel():
    """Unmerged, the two convolutions equal one of kernel W + s · Σⱼ B[o, j] A[j, i, …] (one group)."""
    model = adapted("conv")
    randomize_trainable(model, scale=0.3)
    layer = model.get_base_model().c2
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    kernel = layer.weight + 2.0 * torch.einsum("oj,jikl->oikl", b[:, :, 0, 0], a)  # s = 4 / 2
    x = torch.randn(2, 4, 6, 6, dtype=DOUBLE)
    expected = F.conv2d(x, kernel, layer.bias, stride=2, padding=1)
    assert (output(layer, x) - expected).abs().max() <= 1e-6


def test_multihead_attention_updates_both_projections_as_peft_does():
    """W_in + s B A and W_out + 2 s B_o A_o: peft 0.21 adds the output projection's update twice."""
    model = adapted("mha-batch-first")
    randomize_trainable(model, scale=0.3)
    layer = model.get_base_model().attn
    scaling = layer.scaling["default"]
    reference = copy.deepcopy(layer.base_layer)
    with torch.no_grad():
        reference.in_proj_weight += scaling * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        reference.out_proj.weight += 2 * scaling * (layer.out_proj_lora_B["default"].weight
                                                    @ layer.out_proj_lora_A["default"].weight)
    x = inputs("mha-batch-first")
    with torch.no_grad():
        assert (layer(x, x, x)[0] - reference(x, x, x)[0]).abs().max() <= 1e-6
    keys = set(layer.adapter_state_dict("default"))
    assert keys == {"lora_A.weight", "lora_B.weight", "base_layer.out_proj.lora_A.weight",
                    "base_layer.out_proj.lora_B.weight"}


def test_grouped_convolution_matches_peft_and_refuses_to_merge(tmp_path):
    torch.manual_seed(0)
    base = ConvNet(groups=2).to(DOUBLE).eval()
    x = inputs("conv")
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["c1"]))
    randomize_trainable(model, scale=0.3)
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    assert (output(theirs, x) - output(model, x)).abs().max() <= 1e-5
    with pytest.raises(ConfigError, match="groups cannot be merged"):
        model.merge_adapter()
    with pytest.raises(ConfigError, match="r: 3 is not divisible by the 2 groups"):
        get_peft_model(copy.deepcopy(base), LoraConfig(r=3, target_modules=["c1"]))


@pytest.mark.parametrize(("module", "options", "message"), [
    (nn.Conv2d(3, 4, 3, dilation=2), {}, "dilation"),
    (nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), {}, "padding_mode 'reflect'"),
    (nn.Conv2d(3, 4, 3), {"init_lora_weights": "pissa"}, "init_lora_weights='pissa'"),
    (nn.MultiheadAttention(8, 2), {"use_dora": True}, "use_dora=True"),
    (nn.MultiheadAttention(8, 2, kdim=4, vdim=4), {}, "key / value widths"),
])
def test_what_peft_cannot_do_is_refused_in_one_line(module, options, message):
    holder = nn.ModuleDict({"m": module})
    with pytest.raises(ConfigError, match=message) as error:
        get_peft_model(holder, LoraConfig(r=2, target_modules=["m"], **options))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("case", ["conv", "mha-batch-first"])
def test_weighted_combination_is_refused_rather_than_left_at_zero(case):
    model = adapted(case)
    model.add_adapter("other", LoraConfig(r=2, target_modules=CASES[case][1]))
    with pytest.raises(ConfigError, match="defined for LoRA on Linear, Conv1D and Embedding"):
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "sum", combination_type="cat")
    assert "sum" not in model.peft_config
