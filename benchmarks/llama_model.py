"""Write a Llama-style model folder with random weights for ``peftkit bench --model``: the 1.1B
TinyLlama shape (22 layers, hidden 2048, grouped-query attention) with the bundled MiniLM's WordPiece
tokenizer (vocabulary 30,522; [PAD] is the padding token the classification head needs).

Usage: python benchmarks/llama_model.py --output DIR [--tiny] [--tokenizer DIR]
(--tiny: 2 layers, hidden 64, for a CPU check; --tokenizer: a folder holding MiniLM's tokenizer files, for a
machine without the bundled model package)
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINYLLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
             "num_key_value_heads": 4}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


def main() -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from peftkit.core.pretrained import bundled_model_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--output", required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--tokenizer")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or bundled_model_dir())
    config = LlamaConfig(**(TINY if args.tiny else TINYLLAMA), vocab_size=len(tokenizer), max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"{args.output}: Llama, {sum(p.numel() for p in model.parameters()):,} parameters (random weights)")


if __name__ == "__main__":
    main()
