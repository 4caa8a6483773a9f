"""Encoder adaptation commands: `pretrain-mae` and `finetune`."""

from __future__ import annotations

from pathlib import Path

import typer

from cellbag.cli.app import app, console, deprecated, next_step, shell_path, suggested_store
from cellbag.core.registry import declared_names

ADAPTERS = declared_names("cellbag.featurize.adapter_kinds", "register_adapter")


def _parse_options(items: list[str] | None) -> dict:
    """``key=value`` pairs (ints, floats, booleans, comma lists) into a dict."""
    import json

    from cellbag.featurize.errors import TrainingError

    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise TrainingError(f"adapter option {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.split(",") if "," in raw else raw
        out[key.strip().replace("-", "_")] = value
    return out


@app.command("pretrain-mae")
def pretrain_mae_cmd(
    data: Path = typer.Argument(..., help="Cohort: a challenge-layout folder or a manifest CSV."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Checkpoint folder (resumes when it holds a checkpoint)."
    ),
    model: str = typer.Option(
        "vit_small_patch16_224", "--encoder", "-e", help="A timm ViT (preset or timm name)."
    ),
    weights: str = typer.Option(
        None,
        "--weights",
        "-w",
        help="Starting weights: none | hub | a .safetensors/.pth file. Default: the preset's.",
    ),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Passes over the images."),
    mask_ratio: float = typer.Option(0.75, "--mask-ratio", help="Fraction of patches masked."),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="Images per step (default 256 on GPU, 32 on CPU)."
    ),
    image_size: int = typer.Option(
        None, "--image-size", min=16, help="Input size in pixels (default: the model's, 224)."
    ),
    lr: float = typer.Option(
        1.5e-4, "--base-lr", help="Learning rate per 256 images (scaled by batch size)."
    ),
    warmup_epochs: float = typer.Option(1.0, "--warmup-epochs", help="Linear warm-up length."),
    include_test: bool = typer.Option(
        False,
        "--include-test",
        help="Also pretrain on the test split's images (transductive: their pixels, never "
        "labels, shape the encoder; do not use when the test set must stay unseen).",
    ),
    test_only: bool = typer.Option(
        False,
        "--test-only",
        help="Pretrain on the test split's images only: the training patients that `cellbag "
        "cv` scores stay new to the encoder, so its figures are not transductive.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for order, masks and augmentation."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (bf16 on GPU)."),
    workers: int = typer.Option(
        None, "--workers", min=0, help="Image decoding processes (default: 0 on CPU, 8 on GPU)."
    ),
    save_every: int = typer.Option(500, "--save-every", min=1, help="Checkpoint every N steps."),
    max_seconds: float = typer.Option(
        None,
        "--max-seconds",
        min=0.001,
        help="Stop after this wall-clock budget (the step under way ends, the checkpoint is "
        "saved; a rerun resumes). The schedule still spans --epochs.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    model_old: str = typer.Option(None, "--model", "-m", hidden=True),
) -> None:
    """Self-supervised MAE pretraining of a timm ViT on the cells (training split by default).

    Writes OUT/encoder.safetensors, a plain timm state dict:
    `cellbag featurize DATA STORE --encoder MODEL --weights OUT/encoder.safetensors`.
    It records the patients whose images trained it: `cellbag cv` on those patients marks
    its figures as transductive (`--test-only` keeps the scored patients out).

    \b
    Examples:
      cellbag pretrain-mae demo_out/data --out mae --epochs 2 --image-size 64
      cellbag pretrain-mae DATA -e vit_small_patch16_224 -w hub --device cuda \\
          -o mae
      cellbag pretrain-mae DATA -w none --device cuda --epochs 1000 \\
          --max-seconds 240 -o mae
    """
    from cellbag.featurize.mae import pretrain_mae

    model = deprecated(model, model_old, "--model", "--encoder")
    s = pretrain_mae(
        data,
        out,
        model=model,
        weights=weights,
        epochs=epochs,
        mask_ratio=mask_ratio,
        batch_size=batch_size,
        image_size=image_size,
        include_test=include_test,
        test_only=test_only,
        seed=seed,
        device=device,
        workers=workers,
        max_seconds=max_seconds,
        progress=not quiet,
        base_lr=lr,
        warmup_epochs=warmup_epochs,
        save_every=save_every,
    )
    hist = s["history"]
    first = hist[0]["loss"] if hist else float("nan")
    last = hist[-1]["loss"] if hist else float("nan")
    console.print(
        f"MAE {s['config']['model']}: {s['epochs_done']}/{s['config']['epochs']} epochs, "
        f"{s['global_step']} steps on {s['n_images']} images ({', '.join(s['splits'])}); "
        f"loss {first:.4f} -> {last:.4f}"
    )
    if s.get("images_per_s"):
        console.print(
            f"{s['device']}: {s['step_time_s'] * 1000:.0f} ms/step, {s['images_per_s']:.1f} img/s"
        )
    if s.get("stopped_by") == "max_seconds":
        console.print(
            f"stopped after the {max_seconds:g} s budget ({s['steps_now']} steps in "
            f"{s['loop_seconds']:.1f} s); the same command resumes from the checkpoint"
        )
    if s["unreadable"]:
        console.print(f"[yellow]skipped {len(s['unreadable'])} unreadable image(s)[/]")
    console.print(f"encoder: {s['encoder']['path']}", highlight=False, soft_wrap=True)
    next_step(
        f"cellbag featurize {shell_path(data)} {suggested_store(data)} "
        f"--encoder {s['config']['model']} --weights {shell_path(s['encoder']['path'])} "
        f"--image-size {s['config']['image_size']}"
    )


@app.command("finetune")
def finetune_cmd(
    data: Path = typer.Argument(..., help="Cohort: a challenge-layout folder or a manifest CSV."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (encoder + adapter)."),
    encoder: str = typer.Option(
        "vit_small_patch16_224", "--encoder", "-e", help="Preset or timm model name."
    ),
    weights: str = typer.Option(
        None,
        "--weights",
        "-w",
        help="none | hub | package:efficientnet-lite0 (or -lite1, -lite2) | a .safetensors/.pth "
        "file (e.g. a pretrain-mae encoder). Default: the preset's.",
    ),
    adapter: str = typer.Option(
        "lora",
        "--adapter",
        "-a",
        help=f"{' | '.join(ADAPTERS)} | none (train every weight).",
    ),
    option: list[str] = typer.Option(
        None,
        "--option",
        help="Adapter option key=value, repeatable (e.g. rank=8, alpha=16, targets=q,k,v, "
        "scale=0.1, tokens=8, mode=deep).",
    ),
    epochs: int = typer.Option(5, "--epochs", min=1, help="Passes over the training cells."),
    image_size: int = typer.Option(
        None, "--image-size", min=16, help="Input size in pixels (default: the encoder's)."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="Cells per step (default 128 on GPU, 32 on CPU)."
    ),
    lr: float = typer.Option(
        None, "--lr", help="Learning rate (default 1e-3 with an adapter, 1e-4 without)."
    ),
    val_fraction: float = typer.Option(
        0.25, "--val-fraction", help="Fraction of patients held out for validation."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the split, order and augmentation."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (bf16 on GPU)."),
    workers: int = typer.Option(
        None, "--workers", min=0, help="Image decoding processes (default: 0 on CPU, 8 on GPU)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune an encoder with an adapter on cells labelled by their patient.

    Patients are split (stratified) into train / validation; the report compares a linear
    probe on the frozen encoder with the fine-tuned model (instance-level balanced
    accuracy, written to OUT/metrics.json). Then featurize with the adapted encoder:
    `cellbag featurize DATA STORE --encoder NAME --weights OUT/encoder.safetensors --adapter OUT`.

    \b
    Examples:
      cellbag finetune demo_out/data --out ft --adapter lora --option rank=8 \\
          --epochs 2
      cellbag finetune DATA -e vit_small_patch16_224 -w mae/encoder.safetensors \\
          -a bottleneck -o ft
    """
    from cellbag.featurize.finetune import finetune

    m = finetune(
        data,
        out,
        encoder=encoder,
        weights=weights,
        adapter=adapter,
        adapter_options=_parse_options(option),
        epochs=epochs,
        image_size=image_size,
        batch_size=batch_size,
        lr=lr,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        workers=workers,
        progress=not quiet,
    )
    console.print(
        f"{encoder} + {adapter}: {m['trainable_parameters']:,} of {m['total_parameters']:,} "
        f"parameters trained; {m['n_train_patients']} train / {m['n_val_patients']} val patients "
        f"({m['n_train_cells']} / {m['n_val_cells']} cells)"
    )
    console.print(
        "instance-level val balanced accuracy: "
        f"frozen + linear probe {m['probe_val_balanced_accuracy']:.3f}, "
        f"fine-tuned {m['finetuned_val_balanced_accuracy']:.3f}"
    )
    adapter_flag = f" --adapter {shell_path(out)}" if adapter != "none" else ""
    next_step(
        f"cellbag featurize {shell_path(data)} {suggested_store(data)} --encoder {encoder} "
        f"--weights {shell_path(out / 'encoder.safetensors')}{adapter_flag} "
        f"--image-size {m['image_size']}"
    )
