"""The Textual dashboard. It reads run folders and asks the core to start or stop things; it never imports
torch, diffusers or transformers (import-linter contract in pyproject.toml, and a test)."""
