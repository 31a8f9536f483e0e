"""`?`: every key of the dashboard, what the states mean, and how runs outlive the dashboard."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# flux-tui

## Matrix
| key | does |
| --- | --- |
| `enter` | launch the selected run now, or resume it from its last checkpoint (first in the queue when every slot is busy) |
| `a` | queue every run that is not done yet |
| `x` | stop the selected run: SIGTERM to its process group, so it saves a checkpoint; `x` again offers SIGKILL. On a queued run: take it off the queue (back to `new`) |
| `d` | the run's detail: config, stage timeline, loss curve, scores, images |
| `/` | filter rows by text (every word must match); `escape` clears |
| `s` | sort by a column (again: reverse); a click on a header does the same |
| `l` | move into the log pane (scroll up to stop following; `end` follows again) |
| `1` … | switch view |
| `ctrl+p` | every command, searchable |
| `q` | quit: the runs keep going, queued runs still start as slots free, and the next dashboard finds them |

## Run detail
`escape` back · `tab`/arrows between tabs · `enter` on a thumbnail opens it full size (`←`/`→` next, previous).

## States
`new` not started yet · `queued` waits for a free slot (the queue is on disk and advances with no dashboard
open) · `running:<stage>` prepare, train, generate, score · `done` · `failed` (reason in the detail)
· `cancelled` stopped, resumable with `enter` · `oom` out of GPU memory · `(stale)` the file's settings
changed since the run trained.

## Processes
Runs start in their own session, output to `runs/<name>/train.log`: closing the dashboard or the SSH
connection does not stop them, and when one ends the next queued run starts. From a shell: `flux-tui submit`,
`flux-tui status`, `flux-tui stop`. Each GPU takes `runs_per_gpu` runs (from `[workspace]`); a run goes to the
GPU with the most free memory, or the CPU when there is no NVIDIA GPU.
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 110; height: 90%; border: thick $accent; background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)
