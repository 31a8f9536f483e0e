"""`flux-tui report DIR`: a Markdown report with PNG charts of each hyperparameter's effect and PNG contact
sheets (prompt x run grids of the evaluation images), ready to paste into a paper or a pull request.

matplotlib and Pillow load only here, when a report is written.
"""

from __future__ import annotations

from pathlib import Path

from flux_tui.core import analysis
from flux_tui.core.export import render
from flux_tui.core.metrics import HEADLINE, figures
from flux_tui.core.results import RunRecord

THUMB = 160
LINE_H = 14  # pixels per line of text in the contact sheet's head


def eval_images(rec: RunRecord) -> dict[str, list[Path]]:
    """The run's evaluation images by the prompt that made each (from PNG metadata)."""
    from PIL import Image

    by_prompt: dict[str, list[Path]] = {}
    if rec.run is None or not rec.run.eval_dir.is_dir():
        return by_prompt
    for path in sorted(rec.run.eval_dir.glob("*.png")):
        try:
            with Image.open(path) as im:
                prompt = im.text.get("prompt") if hasattr(im, "text") else None
        except OSError:
            continue
        by_prompt.setdefault(prompt or path.stem, []).append(path)
    return by_prompt


def contact_sheet(records: list[RunRecord], out: Path, max_prompts: int = 12) -> Path | None:
    """A grid: one row per prompt, one column per run, each run's scores under its name."""
    from PIL import Image, ImageDraw

    images = {r.name: eval_images(r) for r in records}
    prompts: list[str] = []
    for by_prompt in images.values():
        prompts += [p for p in by_prompt if p not in prompts]
    prompts = prompts[:max_prompts]
    if not prompts:
        return None
    label_w, head_h, pad = 260, LINE_H * (len(HEADLINE) + 1) + 6, 4
    width = label_w + len(records) * (THUMB + pad)
    height = head_h + len(prompts) * (THUMB + pad)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, rec in enumerate(records):
        x = label_w + j * (THUMB + pad)
        draw.text((x + 2, 4), rec.name[:24], fill="black")
        for i, m in enumerate(HEADLINE, start=1):
            draw.text((x + 2, 4 + LINE_H * i), figures(rec.score, (m,)), fill="black")
    for i, prompt in enumerate(prompts):
        y = head_h + i * (THUMB + pad)
        words, line, lines = prompt.split(), "", []
        for w in words:
            if len(line) + len(w) > 38:
                lines.append(line)
                line = ""
            line = f"{line} {w}".strip()
        lines.append(line)
        draw.multiline_text((4, y + 4), "\n".join(lines[:8]), fill="black")
        for j, rec in enumerate(records):
            paths = images[rec.name].get(prompt)
            if paths:
                with Image.open(paths[0]) as im:
                    sheet.paste(im.convert("RGB").resize((THUMB, THUMB)), (label_w + j * (THUMB + pad), y))
    sheet.save(out)
    return out


def effect_chart(effect: analysis.Effect, out: Path) -> Path | None:
    """One panel per headline score: the score against the hyperparameter, one line per comparison group."""
    if not effect.comparisons:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(5 * len(HEADLINE), 3.6))
    categorical = any(not isinstance(v, int | float) for c in effect.comparisons for v in c.values)
    for ax, score in zip(axes, (m.key for m in HEADLINE), strict=True):
        for comp in effect.comparisons:
            xs = [str(v) for v in comp.values] if categorical else comp.values
            label = ", ".join(f"{analysis.LABELS.get(k, k)} {v}" for k, v in comp.fixed.items())
            ys = [float("nan") if y is None else y for y in comp.scores[score]]
            ax.plot(xs, ys, marker="o", label=label)
        if not categorical and effect.key == "learning_rate":
            ax.set_xscale("log")
        ax.set_xlabel(analysis.LABELS[effect.key])
        ax.set_ylabel(analysis.LABELS[score])
        ax.set_title(effect.reading(score), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(records: list[RunRecord], out_dir: Path, title: str = "flux-tui report") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    done = analysis.scored(records)
    lines = [f"# {title}", ""]
    picks = analysis.top_picks(records)
    lines += ["## Top picks", "", f"Rule: {analysis.PICK_RULE}.", ""]
    if picks:
        lines += [
            f"{i}. **{r.name}** ({r.group}): {figures(r.score, sep=', ', labels=True)}"
            for i, r in enumerate(picks, start=1)
        ]
    else:
        lines.append(f"{analysis.picks_note(records)}.".capitalize())
    lines += ["", "## All runs", "", render(records, "md")]
    lines += ["## Effects of hyperparameters", ""]
    for effect in analysis.all_effects(records):
        chart = effect_chart(effect, out_dir / f"effect_{effect.key}.png")
        lines.append(f"### {analysis.LABELS[effect.key]}")
        lines.append("")
        lines += [f"- {effect.reading(m.key)}" for m in HEADLINE]
        if chart:
            lines += ["", f"![{effect.key}]({chart.name})"]
        lines.append("")
    lines += ["## Images (prompt x run)", ""]
    sheet = contact_sheet(done, out_dir / "contact_sheet.png") if done else None
    lines.append(f"![contact sheet]({sheet.name})" if sheet else "No evaluation images yet.")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
