"""Keep library noise out of train.log and the log pane: progress bars and known-harmless warnings.

The engine prints its own progress lines (step, loss, ETA; generate [k/n]; cache, data, lora). The libraries
add tqdm bars ("Loading weights: 100%|...", "Loading pipeline components...", hub downloads), which in a log
file are lines of carriage returns, and a few notices a user can do nothing about. `install()` runs from
`flux_tui/engine/__init__.py`, so every `python -m flux_tui.engine.<module>` goes through it before torch,
tqdm, huggingface_hub, transformers or diffusers are imported: tqdm and huggingface_hub read their switches
from the environment at import. Any other warning still shows, and a switch the user set is kept.
"""

from __future__ import annotations

import logging
import os
import warnings

# Progress bars off, read at import by tqdm (every bar, diffusers' and transformers' included) and by
# huggingface_hub (downloads). Children of the engine process inherit them.
ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

# (message regex, category): exact notices that say nothing about the user's run.
HARMLESS_WARNINGS = (
    # newer diffusers renamed from_pretrained's torch_dtype to dtype; the older ones we support need torch_dtype
    (r"`torch_dtype` is deprecated and will be removed", FutureWarning),
)

# Loggers whose import-time notices are library-internal compatibility notes (torchao 0.18 under torch 2.14
# and diffusers 0.42, in every engine process); their errors still show.
HARMLESS_LOGGERS = ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")


def install() -> None:
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    for message, category in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in HARMLESS_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
