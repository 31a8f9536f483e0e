"""Reaching the Hugging Face hub, or failing in seconds with what to do.

huggingface_hub 2.x retries every request that meets a network error five times, waiting 1+2+4+8+8 s, and
loading one model makes a dozen requests (config, processor, chat templates...): on a server without
internet, `CLIPModel.from_pretrained("openai/clip-vit-large-patch14")` took four minutes to fail. So before
a hub id is loaded, one short request to the hub decides: reachable, load as usual; unreachable, load from
the local Hugging Face cache when the model is there, else stop at once saying how to work offline.
"""

from __future__ import annotations

import functools
from pathlib import Path

PROBE_TIMEOUT_S = 5.0


class HubUnreachable(Exception):
    """The hub cannot be reached and the model is not in the local cache; the message says what to do."""


def offline_advice(setting: str) -> str:
    return (f"where there is no internet, set HF_HUB_OFFLINE=1 to use only models already in the Hugging Face "
            f"cache (fill it with `hf download` on a machine with internet), or set {setting} to a local folder")  # fmt: skip


def is_hub_id(name: str) -> bool:
    """True when `name` is not a local path, so from_pretrained would ask the hub."""
    return not Path(name).expanduser().exists()


def offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


@functools.cache
def unreachable() -> str | None:
    """None when the hub answers (any HTTP status) within PROBE_TIMEOUT_S, else why not. Asked once per
    process, through huggingface_hub's own HTTP client (its proxy settings and endpoint), with no retry."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint(), timeout=PROBE_TIMEOUT_S, follow_redirects=False)
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer means unreachable
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no answer'}"[:200]
    return None


def is_cached(repo_id: str, filename: str = "config.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def local_files_only(model: str, what: str, setting: str) -> bool:
    """Whether to load `model` with local_files_only=True: False for a local folder, offline mode (the
    libraries then stay off the network themselves) or a reachable hub; True when the hub cannot be reached
    but the model is cached. Raises HubUnreachable, within seconds, when it is neither."""
    if not is_hub_id(model) or offline_mode():
        return False
    reason = unreachable()
    if reason is None:
        return False
    if is_cached(model):
        return True
    raise HubUnreachable(f"{what} {model!r} is not in the local Hugging Face cache and the hub ({endpoint()}) "
                         f"cannot be reached ({reason}); " + offline_advice(setting))  # fmt: skip
