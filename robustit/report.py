"""The Markdown report of a run directory, rendered from what the run wrote (metrics.json,
audit.json, manifest.json, predictions/), so `robustit report RUN_DIR` can redo it; and the
one Markdown table formatter every table of robustit uses."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustit.rundir import RunDirectory

QUALITY = ("BLEU_1", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")
ASR_COLUMNS = (("full", "ASR"), ("image_only", "ASR img"), ("text_only", "ASR txt"), ("false_trigger", "false trig."))


def summary_row(label: str, metrics: dict[str, Any]) -> dict[str, str]:
    """One table row: caption quality and object-naming accuracy where the run has caption
    samples, VQA accuracy where it has VQA samples, ASR variants (percent) and tuning time."""
    row = {"run": label}
    caption = metrics.get("caption")
    if caption is not None:
        row.update({key: f"{caption[key]:.1f}" if key in caption else "-" for key in QUALITY})
        objects = metrics.get("objects")
        row["object named"] = f"{objects['rate']:.1f}" if objects else "-"
    if "vqa" in metrics:
        row["VQA acc"] = f"{metrics['vqa']['accuracy']:.1f}"
    asr = metrics.get("asr", {})
    for key, title in ASR_COLUMNS:
        row[title] = f"{asr[key]['rate']:.1f}" if key in asr else "-"
    train = metrics.get("train")
    row["tuning s"] = f"{train['seconds']:.0f}" if train else "-"
    return row


def markdown_table(rows: list[dict[str, str]]) -> str:
    """The rows as a Markdown table: every column any row has, in order of first appearance;
    "-" where a row lacks one."""
    header = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.get(h, "-") for h in header) + " |" for row in rows]
    return "\n".join(lines)


def defense_line(defense: dict[str, Any] | None) -> str:
    """"Defense: name (key=value, ...)", or VanillaIT when the run had none."""
    if defense is None:
        return "Defense: none (VanillaIT)."
    params = ", ".join(f"{k}={v}" for k, v in sorted(defense["params"].items()))
    return f"Defense: {defense['name']} ({params or 'no parameters'})."


def detection_line(detection: dict[str, Any]) -> str:
    """"flagged k of n samples" and, where a manifest was known, precision and recall (percent)
    and the AUROC of the score ("-" where undefined)."""
    line = f"flagged {detection['n_flagged']} of {detection['n_samples']} samples"
    if "n_poisoned" not in detection:
        return line + " (no manifest: precision and recall unknown)"
    shown = {key: "-" if detection[key] is None else f"{detection[key]:{spec}}{unit}"
             for key, spec, unit in (("precision", ".1f", "%"), ("recall", ".1f", "%"), ("auroc", ".3f", ""))}
    return (f"{line}; against the manifest's {detection['n_poisoned']} poisoned: precision {shown['precision']}, "
            f"recall {shown['recall']}, AUROC {shown['auroc']}")


def drift_line(drift: dict[str, Any]) -> str:
    """The tuned adapter's reading of the test images against the starting one's
    (`robustit.eval.drift`)."""
    line = f"Adapter output on the test images, tuned against starting: mean token cosine {drift['token_cosine']:.3f}"
    if drift["words_kept"] is None:
        return line + "."
    return (f"{line}; visual words kept {drift['words_kept']:.1f}%, {drift['distinct_words']} distinct visual words "
            "after tuning.")


def render_report(run_dir: RunDirectory) -> str:
    """The Markdown report of a run directory, from its files alone."""
    metrics = run_dir.load_metrics()
    rows = [summary_row("base (before tuning)", metrics["base"])] if "base" in metrics else []
    rows.append(summary_row("tuned", metrics))
    out = [f"# robustit report: {metrics['name']}", "", f"Run directory: `{run_dir.path}`", ""]
    if "defense" in metrics:
        out += [defense_line(metrics["defense"]), ""]
    out += ["## Results", ""]
    out += [markdown_table(rows), ""]
    out.append(
        "Caption metrics are corpus-level pycocoevalcap scores in percent on the clean test set; VQA acc: VQA "
        "accuracy in percent of the clean answers (VQAv2's soft accuracy with several human answers, exact "
        "match with one). ASR: share of eligible triggered test inputs whose output contains the target (img / "
        "txt: image or text trigger alone); false trig.: the same on clean inputs. Test samples whose references "
        "already name the target's key words are excluded."
    )
    vqa = metrics.get("vqa")
    if vqa and vqa["by_answer_type"]:
        out += ["", "VQA accuracy by answer type: " + ", ".join(
            f"{kind} {v['accuracy']:.1f} (n={v['n']})" for kind, v in vqa["by_answer_type"].items()) + "."]
    caption = metrics.get("caption", {})
    if caption.get("SPICE") is None and caption.get("spice_unavailable_reason"):
        out += ["", f"SPICE: not reported ({caption['spice_unavailable_reason']})."]
    asr = metrics.get("asr")
    if asr:
        out += ["", "## Attack", "", f"Target: \"{asr['target']}\"; key words {asr['keywords']}; "
                f"{asr['eligible']} eligible test samples, {asr['excluded']} excluded.", ""]
        out.append("| condition | ASR % | exact % | hits / n | key word % |")
        out.append("|---|---|---|---|---|")
        for key, title in ASR_COLUMNS:
            r = asr[key]
            out.append(f"| {title} | {r['rate']:.1f} | {r['exact_rate']:.1f} | {r['hits']} / {r['n']} | {r.get('keyword_rate', float('nan')):.1f} |")
        out += ["", "key word %: share of eligible outputs naming a key word of the target, whole target sentence or not "
                "(false trig.: the clean outputs)."]
    m = run_dir.load_manifest()
    if m is not None:
        out += ["", f"Poisoned {m['n_poisoned']} of {m['n_samples']} training samples with {m['attack']} "
                f"(rate {m['poison_rate']}, seed {m['seed']}, text trigger \"{m['text_trigger']}\", "
                f"trigger sha256 {m['trigger_hash'][:16]}...); see manifest.json."]
    detection = metrics.get("detection")
    if detection:
        out += ["", "## Detection", "", f"The defense {detection_line(detection)}. Each sample's score, flag, "
                "replacement and reason: flags.jsonl. AUROC: of the suspicion score (higher = more suspicious)."]
    train = metrics.get("train")
    if train:
        extra = train.get("extra_forward_passes", 0) / train["steps"]
        out += ["", "## Cost", "", "| steps | seconds | s/step | samples/s | peak MB | forward passes | extra passes/step |",
                "|---|---|---|---|---|---|---|",
                f"| {train['steps']} | {train['seconds']:.1f} | {train['seconds_per_step']:.2f} | "
                f"{train['samples_per_second']:.1f} | {train['peak_memory_mb']:.0f} | {train['forward_passes']} | {extra:.2f} |"]
        if train.get("loss_terms"):
            terms = ", ".join(f"{k} {v:.4f}" for k, v in train["loss_terms"].items())
            out += ["", f"Defense loss terms, mean over steps: {terms} (each step's: loss_terms.json)."]
    drift = metrics.get("adapter_drift")
    if drift:
        out += ["", "## Adapter drift", "", drift_line(drift)]
    if "timings" in metrics:
        out += ["", "Stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in metrics["timings"].items())]
    audit = run_dir.load_audit()
    if audit is not None:
        out += ["", "## Trainable parameters", "", "| module | trainable | frozen |", "|---|---|---|"]
        out += [f"| {name} | {m['trainable']:,} | {m['frozen']:,} |" for name, m in audit["modules"].items()]
        out += ["", f"{audit['trainable']:,} of {audit['total']:,} parameters train. Frozen tensors that "
                f"received a gradient: {audit['frozen_with_grad'] or 'none'}."]
        lora = audit.get("lora")
        if lora:
            out += ["", f"LoRA on the language model (outside the paper's threat model): rank {lora['rank']}, alpha "
                        f"{lora['alpha']:g}, dropout {lora['dropout']:g}, on {', '.join(lora['target_modules'])}."]
    for condition in ("clean", "full"):
        examples = run_dir.load_predictions(condition, 5)
        if examples:
            out += ["", f"## Example predictions ({condition})", ""]
            out += [f"- `{e['instruction']}` -> {e['prediction']!r} (reference: {e['references'][0]!r})" for e in examples]
    return "\n".join(out) + "\n"

