"""Commands of stage 1: `featurize`, `encoders`, `store info`, `store verify`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cellbag.cli.app import app, console, next_step, shell_path, store_app

if TYPE_CHECKING:
    from cellbag.featurize.pipeline import FeaturizeReport


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@app.command("featurize")
def featurize_cmd(
    data: Path = typer.Argument(
        None,
        help="Cohort: a challenge-layout folder or a manifest CSV (from --config when omitted).",
        show_default=False,
    ),
    store: str = typer.Argument(
        None,
        help="Feature store (a folder, or an fsspec URL); created if missing (from --config "
        "when omitted).",
        show_default=False,
    ),
    config: Path = typer.Option(
        None,
        "--config",
        help="A featurize.yaml to replay (STORE/embeddings/ID/featurize.yaml); flags given "
        "beside it override it.",
    ),
    encoder: str = typer.Option(
        None,
        "--encoder",
        "-e",
        help="Preset (see `cellbag encoders`) or any timm model name. "
        "[default: tf_efficientnet_lite0]",
    ),
    weights: str = typer.Option(
        None,
        "--weights",
        "-w",
        help="none | hub | package:efficientnet-lite0 (or -lite1, -lite2) | a .safetensors/.pth "
        "file. Default: the preset's.",
    ),
    image_size: int = typer.Option(
        None,
        "--image-size",
        help="Input size in pixels (default: the preset's, e.g. 224; lite1 240, lite2 260).",
    ),
    crop: str = typer.Option(
        None,
        "--crop",
        help="auto | a fraction (0.1..1): keep the centred square of this fraction of each "
        "image's shorter side before the resize (1: the whole image). auto: 0.57 (the "
        "central 128 of 224 px, the lymphocyte without most red cells) when a look at the "
        "cohort's images finds smear crops centred on a small cell, else 1; same cost per "
        "cell. [default: auto]",
    ),
    stain: str = typer.Option(
        None,
        "--stain",
        help="auto | none | reinhard: match each image's L*a*b* mean and std to a fixed "
        "smear reference after the crop (about 2 ms more per cell on one CPU core). auto: "
        "reinhard on smear crops (as --crop auto decides), else none. [default: auto]",
    ),
    adapter: Path = typer.Option(
        None, "--adapter", help="Adapter folder saved by `cellbag finetune`."
    ),
    batch_size: int = typer.Option(
        None, "--batch-size", "-b", min=1, help="Images per forward pass. [default: 64]"
    ),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda. [default: auto]"),
    precision: str = typer.Option(
        None,
        "--precision",
        help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16. [default: auto]",
    ),
    workers: int = typer.Option(
        None, "--workers", min=1, help="Image decoding threads (default: sized to the device)."
    ),
    decode: str = typer.Option(
        None,
        "--decode",
        help="auto (gpu on CUDA) | cpu (PIL threads) | gpu (JPEGs on the GPU). [default: auto]",
    ),
    force: bool = typer.Option(
        None,
        "--force",
        help="Recompute this encoder's embeddings from scratch (a store of another cohort is "
        "replaced; a folder that is not a cellbag store never is).",
        show_default=False,
    ),
    update: bool = typer.Option(
        None,
        "--update",
        help="Apply changed, added or removed images and label/clinical rows: re-embed them "
        "for every encoder in the store (without it, a changed cohort is refused).",
        show_default=False,
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    chunk_rows: int = typer.Option(
        None, "--chunk-rows", min=1, hidden=True, help="Rows per stored chunk (new store only)."
    ),
    block_rows: int = typer.Option(
        None,
        "--block-rows",
        min=1,
        hidden=True,
        help="Rows per write block, a multiple of --chunk-rows (new store only).",
    ),
) -> None:
    """Embed every cell of a cohort once into the feature store (resumable; a rerun is a no-op).

    The settings go to STORE/embeddings/ID/featurize.yaml: `cellbag featurize --config
    FILE` replays the run (flags beside it override it). Under torchrun (WORLD_SIZE > 1)
    every process embeds its share of the blocks into the same store:
    `torchrun --nproc_per_node=N -m cellbag featurize DATA STORE`.

    \b
    Examples:
      cellbag featurize demo_out/data demo_out/store.zarr
      cellbag featurize cohort/manifest.csv store.zarr \\
          --encoder vit_small_patch16_224 --device cuda
      cellbag featurize DATA store.zarr -e vit_small_patch16_224 \\
          -w mae/encoder.safetensors
      cellbag featurize --config store.zarr/embeddings/ID/featurize.yaml \\
          --batch-size 32
    """
    import dataclasses

    from cellbag.featurize.config import FeaturizeConfig, read_config, with_flags
    from cellbag.featurize.distributed import RankAborted, distributed, launched_world_size
    from cellbag.featurize.pipeline import run_featurize_config

    base = read_config(config) if config is not None else FeaturizeConfig()
    cfg = with_flags(
        base,
        data=None if data is None else str(data),
        store=store,
        encoder=encoder,
        weights=weights,
        image_size=image_size,
        crop=crop,
        stain=stain,
        adapter=None if adapter is None else str(adapter),
        batch_size=batch_size,
        device=device,
        precision=precision,
        workers=workers,
        decode=decode,
        chunk_rows=chunk_rows,
        block_rows=block_rows,
        force=force,
        update=update,
    )
    if cfg.data is None or cfg.store is None:
        missing = "DATA" if cfg.data is None else "STORE"
        raise typer.BadParameter(
            "give DATA and STORE, or --config STORE/embeddings/ID/featurize.yaml",
            param_hint=missing,
        )
    store = cfg.store
    if launched_world_size() > 1:
        with distributed(cfg.device) as job:
            try:
                report = run_featurize_config(
                    dataclasses.replace(cfg, device=job.device),
                    progress=not quiet and job.rank == 0,
                    coordinator=job,
                )
            except RankAborted:
                raise typer.Exit(2) from None  # rank 0 prints why
        if job.rank > 0:
            return
    else:
        report = run_featurize_config(cfg, progress=not quiet)
    _print_report(report)
    if not report.complete:
        again = (
            f"cellbag featurize --config {shell_path(report.config_path)}"
            if report.config_path
            else "the same command"
        )
        next_step(f"rerun {again}: it resumes where this one stopped")
    else:
        runs = shell_path(_runs_dir(store, report.encoder_id))
        next_step(
            f"cellbag cv {shell_path(store)} --encoder {report.encoder_id} "
            f"--head meanpool,abmil,lgbm --out {runs}"
        )


def _runs_dir(store: str, encoder_id: str) -> str:
    """``runs/<encoder id>`` beside a local store (a URL store: under the current folder)."""
    if "://" in str(store):
        return f"runs/{encoder_id}"
    return str(Path(store).parent / "runs" / encoder_id)


def _print_report(report: FeaturizeReport) -> None:
    """The summary of a run (of the whole job, under torchrun)."""
    s = report.store
    if report.created_store:
        console.print(f"created store {s.path} ({s.n_cells} cells)")
    if report.sync is not None and not report.sync.in_sync:
        console.print(f"updated the store: {report.sync.summary()}", highlight=False)
        if report.refreshed:
            console.print(
                f"re-embedded the changed cells for {', '.join(report.refreshed)} too",
                highlight=False,
            )
    if report.took_over_lock:
        t = report.took_over_lock
        console.print(
            f"[yellow]took over the lock of a dead job (pid {t.get('pid')}, {t.get('started')})"
        )
    if report.cells_computed:
        ranks = f" by {report.world} ranks" if report.world > 1 else ""
        console.print(
            f"embedded {report.cells_computed} cells{ranks} in {report.seconds:.1f} s "
            f"({report.cells_per_s:.1f} cells/s), {report.blocks_computed} blocks"
        )
        if report.world > 1:
            for r in report.ranks:
                console.print(
                    f"  rank {r['rank']} ({r['host']}, {r['device']}): {r['cells']} cells, "
                    f"{r['blocks']} blocks, compute {r['compute_s']:.1f} s, "
                    f"write {r['write_s']:.2f} s (stalled {r['write_wait_s']:.2f} s), "
                    f"waited for the others {r['waited_s']:.1f} s",
                    highlight=False,
                )
    else:
        console.print("nothing to do: every block of this encoder is already stored")
    if len(report.unreadable):
        console.print(f"[yellow]{len(report.unreadable)} unreadable image(s), skipped:")
        for row in report.unreadable.head(10).itertuples():
            console.print(f"  {row.path}: {row.reason}", highlight=False)
        if len(report.unreadable) > 10:
            console.print(f"  ... see `cellbag store info {s.path}`")
    if report.changed:
        console.print(
            f"[yellow]{len(report.changed)} image(s) changed since an earlier encoder read them "
            f"(e.g. {report.changed[0]})"
        )
    state = "complete" if report.complete else "incomplete"
    console.print(f"encoder id: [bold]{report.encoder_id}[/] ({state})", highlight=False)
    if report.preprocessing:
        console.print(f"preprocessing (auto): {report.preprocessing}", highlight=False)
    if report.config_path:
        console.print(f"settings: {report.config_path} (replay with --config)", highlight=False)


@app.command("encoders")
def encoders_cmd() -> None:
    """List the encoder presets (any timm model name works too).

    \b
    Examples:
      cellbag encoders
      cellbag featurize DATA STORE --encoder vit_small_patch14_dinov2
    """
    from rich.table import Table

    from cellbag.featurize.registry import list_presets

    table = Table(title="encoder presets (any timm model name works too)")
    table.add_column("name", no_wrap=True)
    table.add_column("default weights", no_wrap=True)
    table.add_column("dim", justify="right")
    table.add_column("description", overflow="fold")
    for p in list_presets():
        table.add_row(p.name, p.weights, str(p.dim), p.description)
    console.print(table)
    next_step("cellbag featurize DATA STORE --encoder NAME")


def _cohort_for(s, data: Path | None):  # noqa: ANN001, ANN202
    """The cohort to compare a store with: ``data``, else the recorded one if still there."""
    import warnings

    from cellbag.data import read_cohort
    from cellbag.data.errors import CohortError

    recorded = s.attrs["cohort"]
    root = data if data is not None else Path(recorded.get("root", ""))
    if data is None and (s.imported or recorded.get("layout") == "synthetic" or not root.exists()):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read_cohort(root)
        except CohortError:
            if data is not None:
                raise
            return None  # the recorded folder holds no cohort now: nothing to compare


@store_app.command("info")
def store_info_cmd(
    store: str = typer.Argument(..., help="Feature store (a folder or an fsspec URL)."),
    data: Path = typer.Option(
        None,
        "--data",
        help="Cohort to compare with (default: the one the store recorded, if it is there).",
    ),
) -> None:
    """Cohort (and whether the store is in sync with it), encoders, unreadable cells, size.

    \b
    Examples:
      cellbag store info demo_out/store.zarr
      cellbag store info demo_out/store.zarr --data data/demo
      cellbag store info s3://bucket/cohort.zarr
    """
    from cellbag.store import Store, StoreError
    from cellbag.store.sync import compare
    from cellbag.store.verify import quick_check

    s = Store.open(store)
    a = s.attrs
    c = a["cohort"]
    pts = s.patients()
    by_split = pts.groupby("split").size().to_dict()
    splits = ", ".join(f"{k} {v}" for k, v in by_split.items())
    console.print(
        f"[bold]{s.path}[/]  ({a.get('created_with')}, created {a.get('created')})", highlight=False
    )
    console.print(
        f"cohort: {c['root']} ({c['layout']}), fingerprint {c['fingerprint']}", highlight=False
    )
    console.print(f"patients: {len(pts)} ({splits}); cells: {s.n_cells}")
    cohort = _cohort_for(s, data)
    if cohort is None:
        console.print(
            "sync: cohort not found here (or not readable); cannot compare", highlight=False
        )
    else:
        diff = compare(s, cohort)
        state = (
            "in sync"
            if diff.in_sync
            else f"[yellow]out of sync[/]: {diff.summary()}; run `cellbag featurize "
            f"{cohort.root} {s.path} --update`"
        )
        console.print(f"sync with {cohort.root}: {state}", highlight=False)
    encoders = s.encoders()
    if not encoders:
        console.print(
            f"no encoders yet: run `cellbag featurize {c['root']} {s.path}`", highlight=False
        )
    else:
        console.print(f"encoders ({len(encoders)}):")
    for eid in encoders:
        try:
            info = s.encoder_info(eid)
            missing = quick_check(s, eid)
        except StoreError as e:
            console.print(f"  [bold]{eid}[/]  [red]damaged[/]: {e}", highlight=False)
            continue
        if missing:
            state = f"[red]damaged[/] ({len(missing)} chunk(s) missing; run `cellbag store verify`)"
        else:
            state = "complete" if info["complete"] else "[yellow]unfinished[/]"
        console.print(
            f"  [bold]{eid}[/]  {state} ({info['done_blocks']}/{info['n_blocks']} blocks)  "
            f"dim {info.get('dim')}, {info.get('image_size', '-')} px, "
            f"{_human_bytes(s.size_bytes(eid))}",
            highlight=False,
        )
        console.print(
            f"      model {info.get('model', '?')}, weights {info.get('weights', '?')} "
            f"(sha256 {str(info.get('weights_sha256', ''))[:12]})",
            highlight=False,
        )
        from cellbag.evaluate.leaks import image_patients, label_patients

        seen, tuned = image_patients(info), label_patients(info)
        if seen or tuned:  # whose cells trained the encoder (cv marks / refuses them)
            console.print(
                f"      trained on the images of {len(seen)} patient(s), the labels of "
                f"{len(tuned)} (cv marks the first transductive, refuses the second)",
                highlight=False,
            )
    bad = s.problems()
    if len(bad):
        console.print(f"[yellow]{len(bad)} unreadable cell(s):")
        for row in bad.head(20).itertuples():
            console.print(f"  {row.cell_id}: {row.reason}", highlight=False)
    console.print(f"size on disk: {_human_bytes(s.size_bytes())}")
    console.print(
        "(complete = every block marked done and its chunk files present; "
        f"`cellbag store verify {s.path}` reads and checks every chunk)",
        highlight=False,
    )
    done = [e for e in encoders if not quick_check_fails(s, e) and s.is_complete(e)]
    if done:
        next_step(
            f"cellbag cv {shell_path(store)} --encoder {done[0]} --head meanpool,abmil,lgbm "
            f"--out {shell_path(_runs_dir(store, done[0]))}"
        )
    else:
        next_step(f"cellbag featurize {shell_path(c['root'])} {shell_path(store)}")


def quick_check_fails(store: Any, encoder_id: str) -> bool:
    """Whether an encoder's done marks or chunk files are damaged (``store info``)."""
    from cellbag.store import StoreError
    from cellbag.store.verify import quick_check

    try:
        return bool(quick_check(store, encoder_id))
    except StoreError:
        return True


@store_app.command("verify")
def store_verify_cmd(
    store: str = typer.Argument(..., help="Feature store (a folder or an fsspec URL)."),
    data: Path = typer.Option(
        None,
        "--data",
        help="Cohort to compare with (default: the one the store recorded, if it is there).",
    ),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Un-mark the blocks holding damaged chunks, so `cellbag featurize` recomputes "
        "only them.",
    ),
    full: bool = typer.Option(
        False,
        "--full",
        help="Hash every image again. Without it an image whose size and mtime are those "
        "recorded counts as unchanged (a change keeping both is not seen).",
    ),
) -> None:
    """Read every chunk: done marks, crc32c checksums, finite values, sync with the cohort.

    Exit code 0 when all is well, 1 when a problem was found (listed per encoder and patient).
    Images are compared by size and mtime (their bytes are hashed when those moved);
    `--full` hashes every image again.

    \b
    Examples:
      cellbag store verify demo_out/store.zarr
      cellbag store verify store.zarr --data cohort/manifest.csv
    """
    from cellbag.store import Store, StoreError
    from cellbag.store.sync import compare
    from cellbag.store.verify import check_encoder
    from cellbag.store.verify import repair as repair_blocks

    try:
        s = Store.open(store, mode="r+" if repair else "r")
        encoders = s.encoders()
    except StoreError as e:
        if "no feature store here" in str(e) or "not a cellbag" in str(e):
            raise
        console.print(f"[red]bad[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    n_bad = n_damaged = n_unsynced = 0
    if not encoders:
        console.print(f"{s.path}: no encoders yet", highlight=False)
    for eid in encoders:
        try:
            check = check_encoder(s, eid)
        except StoreError as e:
            n_bad += 1
            n_damaged += 1
            console.print(f"[red]bad[/] {eid}: {e}", highlight=False)
            continue
        if check.ok:
            console.print(
                f"[green]ok[/]  {eid}: {check.n_blocks} blocks, every chunk read and checked",
                highlight=False,
            )
            continue
        n_bad += 1
        n_damaged += any("unfinished" not in f.what for f in check.findings)
        console.print(
            f"[red]bad[/] {eid}: {len(check.findings)} problem(s), patients "
            f"{', '.join(check.patients[:10]) or '-'}",
            highlight=False,
        )
        for f in check.findings[:20]:
            console.print(f"      {f}", highlight=False)
        if len(check.findings) > 20:
            console.print(f"      ... {len(check.findings) - 20} more", highlight=False)
        if repair:
            blocks = repair_blocks(s, check)
            console.print(
                f"      repaired: {len(blocks)} block(s) un-marked; recompute them with "
                f"`{s.featurize_command(eid)}`",
                highlight=False,
            )
    cohort = _cohort_for(s, data)
    if cohort is None:
        console.print("sync: cohort not found here; not compared", highlight=False)
    else:
        diff = compare(s, cohort, full=full)
        if diff.in_sync:
            how = "every image hashed" if full else "sizes and mtimes; --full hashes every image"
            console.print(f"[green]ok[/]  in sync with {cohort.root} ({how})", highlight=False)
        else:
            n_bad += 1
            n_unsynced += 1
            console.print(
                f"[red]bad[/] out of sync with {cohort.root}: {diff.summary()}", highlight=False
            )
    if n_bad:
        console.print(f"{n_bad} problem(s) found in {s.path}", highlight=False)
        root = cohort.root if cohort is not None else s.attrs.get("cohort", {}).get("root", "DATA")
        featurize = f"cellbag featurize {shell_path(root)} {shell_path(store)}"
        if n_damaged and not repair:  # damaged chunks: un-mark them first, then recompute
            next_step(f"cellbag store verify {shell_path(store)} --repair, then {featurize}")
        elif n_unsynced:
            next_step(f"{featurize} --update")
        else:
            next_step(featurize)
        raise typer.Exit(1)
    console.print(f"{s.path}: all checks passed", highlight=False)
    next_step(f"cellbag store info {shell_path(store)}")
