"""Config base, method registry, target matching, the PeftModel wrapper and the checkpoint format."""
