"""The assessment harness: every method on the same model and data, side by side."""
