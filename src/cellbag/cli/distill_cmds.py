"""Commands of stage 3: `distill` (teach a small end-to-end student) and `predict-images`."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
from rich.table import Table

from cellbag.cli.app import app, console, deprecated, fail, next_step, shell_path
from cellbag.core.registry import declared_names

ADAPTERS = declared_names("cellbag.featurize.adapter_kinds", "register_adapter")


@app.command("distill")
def distill_cmd(
    store: str = typer.Argument(..., help="Feature store holding the teacher's embeddings."),
    data: Path = typer.Argument(
        ..., help="The store's cohort (challenge folder or manifest CSV): the raw images."
    ),
    teacher: Path = typer.Option(
        ...,
        "--teacher",
        help="A `cellbag cv` run folder (RUN_DIR: its best head), one head (RUN_DIR/HEAD), "
        "or a `cellbag fit` MODEL_DIR (in-sample targets).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write (MODEL_DIR)."),
    student: str = typer.Option(
        "tf_efficientnet_lite0",
        "--encoder",
        "-e",
        help="The student's encoder to build: a preset or timm model name.",
    ),
    weights: str = typer.Option(
        None,
        "--weights",
        "-w",
        help="Student's starting weights: none | hub | package:... | a file. Default: the preset's.",
    ),
    image_size: int = typer.Option(
        112, "--image-size", min=16, help="Student input size (px; smaller is faster)."
    ),
    adapter: str = typer.Option(
        None,
        "--adapter",
        help=f"Train only an adapter in the encoder: {' | '.join(ADAPTERS)}, "
        "or a saved adapter folder (ViT students).",
    ),
    teacher_encoder: str = typer.Option(
        None, "--teacher-encoder", help="Teacher encoder id (default: from the run's config)."
    ),
    epochs: int = typer.Option(8, "--epochs", min=1, help="Passes over the training bags."),
    cells_per_bag: int = typer.Option(
        64, "--cells-per-bag", min=1, help="At most this many cells per bag per step (M)."
    ),
    bags_per_step: int = typer.Option(2, "--bags-per-step", min=1, help="Bags per optimiser step."),
    encoder_batch: int = typer.Option(
        64, "--encoder-batch", min=1, help="Cells per encoder sub-batch."
    ),
    lr: float = typer.Option(2e-4, "--lr", help="Learning rate of the encoder (or adapter)."),
    head_lr: float = typer.Option(1e-3, "--head-lr", help="Learning rate of the head."),
    lambda_ce: float = typer.Option(1.0, "--lambda-ce", min=0, help="Weight of the label loss."),
    lambda_kd: float = typer.Option(
        1.0, "--lambda-kd", min=0, help="Weight of T²·KL(teacher‖student) on probabilities."
    ),
    lambda_att: float = typer.Option(
        0.5, "--lambda-att", min=0, help="Weight of KL(teacher‖student) on per-cell attention."
    ),
    lambda_emb: float = typer.Option(
        0.5, "--lambda-emb", min=0, help="Weight of 1−cos to the teacher's cell embeddings."
    ),
    temperature: float = typer.Option(2.0, "--temperature", min=0.01, help="KD temperature T."),
    clinical: bool = typer.Option(
        True, "--clinical/--no-clinical", help="Fuse clinical features into the head."
    ),
    augment: bool = typer.Option(
        True, "--augment/--no-augment", help="Random flips and quarter turns of cells."
    ),
    grad_checkpointing: bool = typer.Option(
        False, "--grad-checkpointing", help="Recompute encoder activations (less memory)."
    ),
    trainable_blocks: int = typer.Option(
        3,
        "--trainable-blocks",
        min=-1,
        help="Train the encoder's last K blocks (earlier layers frozen: much faster on CPU); "
        "-1 trains the whole encoder.",
    ),
    threshold: float = typer.Option(
        0.5, "--threshold", min=0, max=1, help="Decision threshold stored in the model."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (bf16 on CUDA)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same model)."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
    force: bool = typer.Option(False, "--force", help="Overwrite a model already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    student_old: str = typer.Option(None, "--student", hidden=True),
) -> None:
    """Train a small end-to-end student (encoder + attention-MIL + clinical) taught by a cv run.

    The teacher's encoder never runs: its out-of-fold probabilities and attention come from
    the run folder, its cell embeddings from the store. Only training-split patients are used.

    \b
    Examples:
      cellbag distill demo_out/store.zarr demo_out/data --teacher runs/effnet \\
          --out student
      cellbag distill store.zarr DATA --teacher runs/vit/abmil \\
          -e vit_tiny_patch16_224 --adapter lora -o s
    """
    import torch

    from cellbag.data import read_cohort
    from cellbag.distill import DistillConfig, LossWeights, distill, read_teacher
    from cellbag.distill.model_dir import CONFIG_FILE
    from cellbag.distill.train import training_patients
    from cellbag.store import Store

    student = deprecated(student, student_old, "--student", "--encoder")
    if (out / CONFIG_FILE).exists() and not force:
        fail(f"{out}: a model is already there (use --force to overwrite it)")
    if threads:
        torch.set_num_threads(threads)
    st = Store.open(store)
    if st.imported:
        fail(
            f"{store}: imported features, no cell images: a student learns from images "
            "(distil from a store made by `cellbag featurize`)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = read_cohort(data)
    pids, _ = training_patients(cohort.patients)
    t = read_teacher(teacher, st, pids, encoder_id=teacher_encoder)
    losses = LossWeights(
        ce=lambda_ce, kd=lambda_kd, att=lambda_att, emb=lambda_emb, temperature=temperature
    )
    config = DistillConfig(
        student=student,
        weights=weights,
        image_size=image_size,
        adapter=adapter,
        epochs=epochs,
        cells_per_bag=cells_per_bag,
        bags_per_step=bags_per_step,
        encoder_batch=encoder_batch,
        lr=lr,
        head_lr=head_lr,
        losses=losses,
        clinical=clinical,
        augment=augment,
        grad_checkpointing=grad_checkpointing,
        trainable_blocks=trainable_blocks,
        device=device,
        seed=seed,
        threshold=threshold,
    )
    console.print(
        f"teacher [bold]{t.id}[/] ({len(pids)} training patients"
        f"{', with attention' if t.attention is not None else ', no attention'})",
        highlight=False,
    )
    res = distill(st, cohort, t, config, out=out, progress=not quiet)
    if clinical and not res.config["clinical"]["enabled"]:
        console.print("no clinical data for the training patients: the student is image-only")
    table = Table(title="Distillation loss per epoch")
    keys = [k for k in ("ce", "kd", "att", "emb", "total") if k in res.history[0]]
    for c in ("epoch", *keys, "seconds"):
        table.add_column(c, justify="right")
    for rec in res.history:
        table.add_row(str(rec["epoch"]), *(f"{rec[k]:.4f}" for k in keys), f"{rec['seconds']:.1f}")
    console.print(table)
    console.print(f"student written to [bold]{res.out}[/] in {res.seconds:.1f} s", highlight=False)
    next_step(
        f"cellbag predict-images {shell_path(res.out)} {shell_path(data)} --out submission.csv"
    )


@app.command("predict-images")
def predict_images_cmd(
    model_dir: Path = typer.Argument(
        ..., help="Student model folder written by `cellbag distill`."
    ),
    data: Path = typer.Argument(
        ..., help="Cohort to predict: a challenge-layout folder or a manifest CSV (no store)."
    ),
    out: Path = typer.Option(
        Path("submission.csv"), "--out", "-o", help="Submission CSV (Id,Predicted)."
    ),
    clinical_csv: Path = typer.Option(
        None,
        "--clinical-csv",
        help="Clinical CSV for a manifest (default: clinical.csv beside it).",
    ),
    split: str = typer.Option(
        "auto", "--split", help="auto (the test split if any, else all) | test | train | all."
    ),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Cells per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    clinical_old: Path = typer.Option(None, "--clinical", hidden=True),
) -> None:
    """Predict patients from raw image folders with a distilled student (offline, no teacher).

    Writes `Id,Predicted` to --out and the probabilities to <out stem>_proba.csv.

    \b
    Examples:
      cellbag predict-images student demo_out/data --out submission.csv
      cellbag predict-images student new/manifest.csv \\
          --clinical-csv new/clinical.csv --split all
    """
    import torch

    from cellbag.data import read_cohort
    from cellbag.distill import load_student, predict_images, write_predictions

    if threads:
        torch.set_num_threads(threads)
    student = load_student(model_dir, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = read_cohort(
            data, deprecated(clinical_csv, clinical_old, "--clinical", "--clinical-csv")
        )
    table = predict_images(student, cohort, split=split, batch_size=batch_size, progress=not quiet)
    sub, probs = write_predictions(table, out)
    t = Table(
        title=f"Predictions ({student.config['teacher'].get('head', '?')} student, "
        f"threshold {student.threshold:g})"
    )
    for c in ("Id", "split", "cells", "probability", "Predicted"):
        t.add_column(c, justify="left" if c in ("Id", "split") else "right")
    for r in table.itertuples():
        t.add_row(r.patient_id, r.split, str(r.n_cells), f"{r.probability:.4f}", str(r.predicted))
    console.print(t)
    console.print(f"wrote {sub} and {probs}", highlight=False)
    next_step(f"submit {shell_path(sub)} (Id,Predicted); probabilities: {shell_path(probs)}")
