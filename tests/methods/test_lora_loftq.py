"""LoRA's LoftQ initialisation on the NF4 path: the 4-bit base and the factors chosen together (Eckart–Young on the
quantisation error), one iteration equal to QLoRA's quantisation, more iterations no worse, saved as a plain LoRA
adapter that peft reads, refusals in one line, and ``peftkit train --method qlora`` with it."""

from __future__ import annotations

import json

import peft
import pytest
import torch

import peftkit
from peftkit.cli import main
from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.quantization import dequantized, is_nf4, quantize_nf4
from tests.conftest import tiny_batch, tiny_model

LOFTQ = {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4, "loftq_iter": 1}}


def loftq_llama(r: int = 4, iterations: int = 1, alpha: float = 8):
    config = peftkit.LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear", init_lora_weights="loftq",
                                loftq_config={"loftq_bits": 4, "loftq_iter": iterations})
    return peftkit.get_peft_model(tiny_model("llama"), config)


def approximation_errors(model, original) -> list[tuple[float, float, float]]:
    """Per adapted layer: (‖W − (Q + s B A)‖, ‖W − Q‖, the Eckart–Young bound of the rank-r remainder)."""
    errors = []
    for name, layer in model.adapter_layers():
        w = original.get_submodule(name).weight.float()
        q = dequantized(layer.base_layer.weight).float()
        approximation = q + layer.scaling["default"] * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
        remainder = torch.linalg.svdvals(w - q)[layer.lora_A["default"].weight.shape[0]:]
        errors.append((float((w - approximation).norm()), float((w - q).norm()), float(remainder.norm())))
    return errors


def test_one_iteration_quantises_as_qlora_and_the_factors_take_the_best_rank_r_part_of_the_error():
    model, original = loftq_llama(), tiny_model("llama")
    qlora = tiny_model("llama")
    quantize_nf4(qlora)
    for name, layer in model.adapter_layers():
        assert is_nf4(layer.base_layer.weight)
        assert torch.equal(dequantized(layer.base_layer.weight), dequantized(qlora.get_submodule(name).weight))
    for with_factors, without, bound in approximation_errors(model, original):
        assert with_factors == pytest.approx(bound, rel=1e-3, abs=1e-5) and with_factors < 0.9 * without


def test_more_iterations_approximate_the_weight_no_worse():
    original = tiny_model("llama")
    one = sum(error for error, _, _ in approximation_errors(loftq_llama(iterations=1), original))
    five = sum(error for error, _, _ in approximation_errors(loftq_llama(iterations=5), original))
    assert five <= one * 1.0001


def test_the_split_of_the_factors_does_not_depend_on_the_scaling():
    original = tiny_model("llama")
    scaled = approximation_errors(loftq_llama(alpha=32), original)
    plain = approximation_errors(loftq_llama(alpha=4), original)
    assert [round(e, 4) for e, _, _ in scaled] == [round(e, 4) for e, _, _ in plain]


def test_saved_as_a_plain_adapter_that_peft_reads_on_the_4_bit_base(tmp_path):
    model = loftq_llama()
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["init_lora_weights"] is True and saved["loftq_config"] == {}
    base = tiny_model("llama")
    with torch.no_grad():  # peft's float model holds the base dequantised, as its LoftQ does
        for name, layer in model.adapter_layers():
            base.get_submodule(name).weight.copy_(dequantized(layer.base_layer.weight))
    theirs = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(theirs(**batch).logits, expected, atol=1e-5)
    again = tiny_model("llama")
    quantize_nf4(again)
    ours = peftkit.PeftModel.from_pretrained(again, tmp_path)
    with torch.no_grad():
        assert torch.allclose(ours(**batch).logits, expected, atol=1e-6)


@pytest.mark.parametrize("settings, message", [
    ({"init_lora_weights": "loftq"}, "needs loftq_config"),
    ({**LOFTQ, "loftq_config": {"loftq_bits": 8}}, "4-bit NF4 only"),
    ({**LOFTQ, "loftq_config": {"loftq_iter": 0}}, "loftq_iter must be a whole number"),
    ({**LOFTQ, "loftq_config": {"bits": 4}}, "unknown key"),
])
def test_bad_loftq_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as error:
        peftkit.LoraConfig(**settings)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind, quantized, message", [("gpt2", False, "is Conv1D"),
                                                      ("llama", True, "needs the float weight")])
def test_loftq_refuses_what_it_cannot_quantise_and_leaves_the_model(kind, quantized, message):
    model = tiny_model(kind)
    if quantized:
        quantize_nf4(model)
    before = [name for name, _ in model.named_modules()]
    with pytest.raises(ConfigError, match=message):
        peftkit.get_peft_model(model, peftkit.LoraConfig(r=2, target_modules="all-linear", **LOFTQ))
    assert [name for name, _ in model.named_modules()] == before


def test_peftkit_train_qlora_with_loftq_stores_every_linear_layer_in_4_bits(model_dir, data, tmp_path, capsys):
    output = tmp_path / "adapter"
    args = ["train", "--model", str(model_dir), "--train", str(data / "train.csv"), "--text-column", "review",
            "--label-column", "sentiment", "--max-steps", "2", "--batch-size", "4", "--max-length", "16",
            "--method", "qlora", "-o", "init_lora_weights=loftq", "-o", "loftq_config={loftq_iter: 1}",
            "--output", str(output)]
    assert main(args) == 0
    assert json.loads((output / "adapter_config.json").read_text())["init_lora_weights"] is True
    assert main(["eval", "--adapter", str(output), "--eval", str(data / "dev.jsonl")]) == 0
    args[args.index("qlora")] = "lora"
    assert main(args + ["--overwrite"]) == 2
    assert "use it with --method qlora" in capsys.readouterr().err
    args[args.index("lora")] = "qlora"
    args[args.index("loftq_config={loftq_iter: 1}")] = "loftq_config={loftq_iter: 2}"
    assert main(args + ["--overwrite"]) == 2
    assert "loftq_iter must be 1 here" in capsys.readouterr().err
