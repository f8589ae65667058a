"""How it is trained: procedures around the training loop (plain fine-tuning for now)."""
