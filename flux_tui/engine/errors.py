"""The engine's expected failures: one base class, so that no caller tells them apart by name.

An `EngineError` is a failure the user can act on (a missing model, bad input, a library to install); its
message says what happened and what to do. A run that ends on one shows that message alone, without a
type name or a traceback; anything else is a bug or an accident and is shown with its type and traceback.
"""

from __future__ import annotations


class EngineError(Exception):
    """An expected failure of the engine; the message says what happened and what to do."""
