"""The figures of the benchmark report (`robustit.bench.report`), drawn from numbers the report
has already taken from the result store, each returned as PNG bytes:

    radar_figure            one attack's defense variants on five axes in [0, 1]: BLEU_4, METEOR
                            and CIDEr each over their maximum among the variants, the share of
                            clean captions naming the image's object, and (100 - ASR) / 100
    asr_cider_figure        ASR against clean CIDEr, a point per (defense variant, attack), with
                            the Pareto front: the points no other point beats on both (lower or
                            equal ASR and higher or equal CIDEr, one of them strictly)
    asr_poison_rate_figure  ASR against poison rate, a panel per attack, a line per variant
    training_curves_figure  a panel per defense variant (one of its runs): the LM loss over the
                            tuning steps on the left axis, each defense term on the right

Rendering is deterministic: a fixed size and dpi, the Agg backend, and no Software entry in
the PNG's metadata, so the same numbers give the same bytes on every machine with the same
matplotlib.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

from robustit.plotting import png_bytes, pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RADAR_AXES = ("BLEU_4", "METEOR", "CIDEr", "object named", "100 - ASR")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">")


def _png(figure: Figure) -> bytes:
    """The figure's PNG without the Software entry, so its bytes do not name matplotlib's version."""
    return png_bytes(figure, metadata={"Software": None})


def palette(variants: Sequence[str]) -> dict[str, str]:
    """A distinct colour per variant, in order (one variant keeps its colour across the
    figures): matplotlib's ten default colours where they suffice, else evenly spaced colours
    of the tab20 map (up to 20) or the turbo map."""
    if len(variants) <= 10:
        return {variant: f"C{i}" for i, variant in enumerate(variants)}
    from matplotlib import colormaps
    from matplotlib.colors import to_hex
    colours = (colormaps["tab20"].colors if len(variants) <= 20
               else [colormaps["turbo"](k / (len(variants) - 1)) for k in range(len(variants))])
    return {variant: to_hex(colour) for variant, colour in zip(variants, colours)}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (ASR, CIDEr) points that no other point beats on both, by ASR ascending."""
    front = [p for p in set(points)
             if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)]
    return sorted(front)


def radar_figure(title: str, polygons: Mapping[str, Sequence[float]], colours: Mapping[str, str]) -> bytes:
    """One polygon per variant over `RADAR_AXES`, each value in [0, 1]."""
    plt = pyplot()
    angles = [2 * math.pi * k / len(RADAR_AXES) for k in range(len(RADAR_AXES))]
    figure = plt.figure(figsize=(6.4, 6.4), layout="constrained")
    axis = figure.add_subplot(projection="polar")
    for variant, values in polygons.items():
        axis.plot([*angles, angles[0]], [*values, values[0]], color=colours[variant], linewidth=1.5, label=variant)
        axis.fill([*angles, angles[0]], [*values, values[0]], color=colours[variant], alpha=0.08)
    axis.set_xticks(angles)
    axis.set_xticklabels(RADAR_AXES, fontsize=9)
    axis.tick_params(axis="x", pad=8)
    axis.set_ylim(0, 1)
    axis.set_yticks([0.25, 0.5, 0.75, 1.0])
    axis.tick_params(axis="y", labelsize=7)
    axis.set_title(title, fontsize=10)
    figure.legend(fontsize=8, loc="outside lower center")
    return _png(figure)


def asr_cider_figure(points: Mapping[tuple[str, str], tuple[float, float]], colours: Mapping[str, str]) -> bytes:
    """`points` maps (variant, attack) to (ASR, clean CIDEr): a colour per variant, a marker
    per attack, and the Pareto front circled and joined by a step line."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    attacks = sorted({attack for _, attack in points})
    markers = {attack: MARKERS[i % len(MARKERS)] for i, attack in enumerate(attacks)}
    figure, axis = plt.subplots(figsize=(8.5, 4.8), layout="constrained")
    for (variant, attack), (asr, cider) in points.items():
        axis.scatter(asr, cider, color=colours[variant], marker=markers[attack], s=40, zorder=3)
    front = pareto_front(list(points.values()))
    (front_line,) = axis.step([x for x, _ in front], [y for _, y in front], where="post", color="black", linestyle="--",
                              linewidth=1, marker="o", markersize=12, markerfacecolor="none", label="Pareto front", zorder=2)
    handles = [Line2D([], [], color=colours[v], marker="o", linestyle="", label=v) for v in dict.fromkeys(v for v, _ in points)]
    handles += [Line2D([], [], color="grey", marker=markers[a], linestyle="", label=a) for a in attacks]
    figure.legend(handles=[*handles, front_line], fontsize=8, loc="outside right center")
    axis.set_xlabel("ASR % (lower is better)")
    axis.set_ylabel("clean CIDEr (higher is better)")
    axis.set_title("ASR against clean caption quality, poison rate 0.1", fontsize=10)
    axis.grid(alpha=0.3)
    return _png(figure)


def asr_poison_rate_figure(curves: Mapping[str, Mapping[str, Mapping[float, float]]], colours: Mapping[str, str]) -> bytes:
    """`curves` maps attack -> variant -> {poison rate: ASR}: a panel per attack, its rates
    as evenly spaced categories."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 4.2), sharey=True, squeeze=False,
                                layout="constrained")
    for axis, (attack, lines) in zip(axes[0], curves.items()):
        rates = sorted({rate for line in lines.values() for rate in line})
        for variant, line in lines.items():
            axis.plot([rates.index(rate) for rate in sorted(line)], [line[rate] for rate in sorted(line)], marker="o",
                      color=colours[variant], label=variant)
        axis.set_xticks(range(len(rates)))
        axis.set_xticklabels([f"{rate:g}" for rate in rates])
        axis.set_xlabel("poison rate")
        axis.set_title(attack, fontsize=10)
        axis.set_ylim(-5, 105)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("ASR %")
    labelled = {label: handle for axis in axes[0] for handle, label in zip(*axis.get_legend_handles_labels())}
    figure.legend(labelled.values(), labelled.keys(), fontsize=8, loc="outside lower center", ncols=min(len(labelled), 4))
    return _png(figure)


def training_curves_figure(runs: Mapping[str, tuple[str, Mapping[str, Sequence[float]]]]) -> bytes:
    """`runs` maps variant -> (the run's label, its curves: "step", "lm" and each term): a
    panel per variant, three to a row."""
    plt = pyplot()
    columns = min(3, len(runs))
    rows = math.ceil(len(runs) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, layout="constrained")
    for axis, (variant, (label, curves)) in zip(axes.flat, runs.items()):
        steps = curves["step"]
        axis.plot(steps, curves["lm"], color="black", label="LM loss")
        axis.set_title(f"{variant}\n{label}", fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.set_ylabel("LM loss", fontsize=8)
        axis.grid(alpha=0.3)
        terms = [name for name in curves if name not in ("step", "lm")]
        if terms:
            right = axis.twinx()
            for k, name in enumerate(terms):
                right.plot(steps, curves[name], color=f"C{k}", linestyle="--", label=name)
            right.set_ylabel("defense terms", fontsize=8)
            right.legend(fontsize=7, loc="upper right")
    for axis in list(axes.flat)[len(runs):]:
        axis.set_visible(False)
    return _png(figure)
