"""Shared helpers. Nothing here imports torch at module import time except the modules
that exist to wrap it (checkpoint, meters, visualize, ...), so `help` stays fast."""
