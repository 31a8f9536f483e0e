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
LINE_H = 16  # pixels per line of text in the contact sheet (13 px DejaVu Sans)


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


def label_font(size: int = 13):
    """A font with real word spaces at small sizes: matplotlib's DejaVu Sans (Pillow's built-in default
    draws a space two pixels wide, so "a photo of cr7man" reads "aphotoofcr7man")."""
    from matplotlib import font_manager
    from PIL import ImageFont

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=False), size)
    except (OSError, ValueError):
        return ImageFont.load_default(size)


def wrap(text: str, font, width: int) -> list[str]:
    """`text` in lines no wider than `width` pixels in `font`, broken at spaces (a longer word stays whole)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and font.getlength(candidate) > width:
            lines.append(line)
            candidate = word
        line = candidate
    return [*lines, line] if line else lines


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
    font = label_font()
    label_w, head_h, pad = 260, LINE_H * (len(HEADLINE) + 1) + 6, 4
    width = label_w + len(records) * (THUMB + pad)
    height = head_h + len(prompts) * (THUMB + pad)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, rec in enumerate(records):
        x = label_w + j * (THUMB + pad)
        draw.text((x + 2, 4), rec.name[:24], fill="black", font=font)
        for i, m in enumerate(HEADLINE, start=1):
            draw.text((x + 2, 4 + LINE_H * i), figures(rec.score, (m,)), fill="black", font=font)
    for i, prompt in enumerate(prompts):
        y = head_h + i * (THUMB + pad)
        lines = wrap(prompt, font, label_w - 12)[: (THUMB - 8) // LINE_H]
        draw.multiline_text((4, y + 4), "\n".join(lines), fill="black", font=font, spacing=LINE_H - 13)
        for j, rec in enumerate(records):
            paths = images[rec.name].get(prompt)
            if paths:
                with Image.open(paths[0]) as im:
                    sheet.paste(im.convert("RGB").resize((THUMB, THUMB)), (label_w + j * (THUMB + pad), y))
    sheet.save(out)
    return out


NO_FACE = "no face found in these runs' images:\nno {label} to chart"


def effect_figure(effect: analysis.Effect):
    """The matplotlib figure of `effect_chart`: a panel per headline score; a score no run has (a face score
    when no face was found anywhere) gets a sentence instead of empty axes with meaningless limits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(5 * len(HEADLINE), 3.6))
    categorical = any(not isinstance(v, int | float) for c in effect.comparisons for v in c.values)
    legend = True  # on the first panel with lines only
    for ax, m in zip(axes, HEADLINE, strict=True):
        score = m.key
        if all(y is None for c in effect.comparisons for y in c.scores[score]):
            ax.set_title(m.label, fontsize=8)
            ax.set_axis_off()
            ax.text(0.5, 0.5, NO_FACE.format(label=m.label) if m.needs_face else f"no {m.label} to chart",
                    ha="center", va="center", transform=ax.transAxes, fontsize=10)  # fmt: skip
            continue
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
        if legend:
            ax.legend(fontsize=7)
            legend = False
    fig.tight_layout()
    return fig


def effect_chart(effect: analysis.Effect, out: Path) -> Path | None:
    """One panel per headline score: the score against the hyperparameter, one line per comparison group."""
    if not effect.comparisons:
        return None
    import matplotlib.pyplot as plt

    fig = effect_figure(effect)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def steps_section(records: list[RunRecord]) -> list[str]:
    """The within-run steps analysis: each run's score curve (eval_every), beside the across-run comparison."""
    readings = analysis.steps_readings(records)
    head = f"Within runs (each run's score curve; best step: {analysis.STEP_RULE}):"
    if not readings:
        return [head, "", "- no run has a score curve of two or more evaluated steps (eval_every)"]
    return [head, "", *(f"- {text}" for text in readings)]


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
        if effect.key == "max_train_steps":
            lines += ["", *steps_section(records)]
        lines.append("")
    lines += ["## Images (prompt x run)", ""]
    sheet = contact_sheet(done, out_dir / "contact_sheet.png") if done else None
    lines.append(f"![contact sheet]({sheet.name})" if sheet else "No evaluation images yet.")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
