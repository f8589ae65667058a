"""Small helpers every layer may use (process memory readings)."""
