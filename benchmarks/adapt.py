"""Encoder adaptation speed: MAE pretraining step time and images/s (and optionally the
fine-tuning figures on the demo cohort).

    python benchmarks/adapt.py                       # ViT-S/16 at 224 px on CPU, a few steps
    python benchmarks/adapt.py --device cuda --batch-size 256 --steps 20
    python benchmarks/adapt.py --model vit_tiny_patch16_224 --finetune

Prints one line per measurement. Random weights (no network); synthetic pixels for the
MAE step (decoding is not timed: on a GPU machine the loader's workers hide it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def mae_steps(model: str, size: int, batch: int, steps: int, device: str) -> None:
    import timm
    import torch

    from cellbag.core.device import resolve_device
    from cellbag.featurize.mae import MaskedAutoencoder

    prec = resolve_device(device)
    torch.manual_seed(0)
    enc = timm.create_model(model, pretrained=False, num_classes=0, img_size=size)
    mae = MaskedAutoencoder(enc).to(prec.device)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-4, betas=(0.9, 0.95))
    x = torch.randn(batch, 3, size, size, device=prec.device)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        if prec.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with prec.context():
            loss, _, _ = mae(x, 0.75, torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if prec.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = sorted(times[2:])[len(times[2:]) // 2]
    dev = torch.cuda.get_device_name() if prec.is_cuda else f"cpu x{torch.get_num_threads()}"
    print(
        f"mae {model} {size}px batch {batch} on {dev} "
        f"({prec.autocast or 'fp32'}): {t * 1000:.1f} ms/step (median of {steps}), "
        f"{batch / t:.1f} img/s"
    )


def finetune_figures(model: str, size: int, epochs: int, device: str) -> None:
    from cellbag.data.demo import make_demo_cohort
    from cellbag.featurize.finetune import finetune

    with tempfile.TemporaryDirectory() as tmp:
        data = make_demo_cohort(f"{tmp}/demo", patients=40, cells_per_patient=40, seed=0)
        t0 = time.perf_counter()
        m = finetune(
            data, f"{tmp}/ft", encoder=model, weights="none", adapter="lora",
            epochs=epochs, image_size=size, device=device, progress=False,
        )  # fmt: skip
        print(
            f"finetune {model} lora {size}px {epochs} epochs on the demo cohort "
            f"({m['n_train_cells']} train / {m['n_val_cells']} val cells): instance-level val "
            f"balanced accuracy probe {m['probe_val_balanced_accuracy']:.3f}, fine-tuned "
            f"{m['finetuned_val_balanced_accuracy']:.3f} ({time.perf_counter() - t0:.0f} s)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--finetune", action="store_true", help="also fine-tune on the demo cohort")
    p.add_argument("--finetune-size", type=int, default=64)
    p.add_argument("--finetune-epochs", type=int, default=3)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    batch = a.batch_size or (256 if a.device.startswith("cuda") else 16)
    mae_steps(a.model, a.image_size, batch, a.steps, a.device)
    if a.finetune:
        finetune_figures(a.model, a.finetune_size, a.finetune_epochs, a.device)


if __name__ == "__main__":
    main()
