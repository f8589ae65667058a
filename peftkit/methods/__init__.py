"""What is trained: each module here holds one method's config and layers and registers it."""

from peftkit.methods import lora  # noqa: F401  (registers the method)
