"""The ground floor: safe writes, the device resolver, pixel ops and the training loop."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from cellbag.core.device import DeviceError, resolve_device
from cellbag.core.io import atomic_path, file_sha256, save_safetensors, write_json
from cellbag.core.pixels import flip_rotate, hwc_to_chw, normalize
from cellbag.core.train_loop import LoopState, cosine_schedule, train_loop, weight_decay_groups


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"x": float("nan"), "p": tmp_path})
    doc = json.loads(target.read_text())
    assert doc["p"] == str(tmp_path) and doc["x"] != doc["x"]  # NaN kept, paths as text
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".json" and tmp.parent == tmp_path
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary left


def test_safetensors_digest_is_the_files(tmp_path):
    path = tmp_path / "w.safetensors"
    sha = save_safetensors({"w": torch.arange(6.0).view(2, 3).t()}, path, kind="test")
    assert sha == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_device_resolver():
    cpu = resolve_device("CPU", "auto")
    assert str(cpu) == "cpu" and cpu.precision == "fp32" and cpu.autocast is None
    assert cpu.workers() == 0 and not cpu.is_cuda
    assert resolve_device("cpu", "bf16").autocast is torch.bfloat16
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(KeyError, match="unknown precision"):
        resolve_device("cpu", "fp8", error=KeyError)  # a stage's own error class
    if not torch.cuda.is_available():
        assert str(resolve_device("auto")) == "cpu"
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_pixels_normalise_and_augment_the_same_in_both_layouts():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    z = normalize(x, mean, std)
    want = (x.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(z.double(), want, atol=1e-6, rtol=0)
    assert normalize(x, mean, std, channels_last=True).is_contiguous(
        memory_format=torch.channels_last
    )
    hwc = x.permute(0, 2, 3, 1).contiguous()
    torch.testing.assert_close(normalize(hwc_to_chw(hwc), mean, std), z)
    a = flip_rotate(x, torch.Generator().manual_seed(3))
    b = flip_rotate(hwc, torch.Generator().manual_seed(3), channels_first=False)
    assert torch.equal(a, b.permute(0, 3, 1, 2))
    assert not torch.equal(a, x)  # something moved
    # only flips and quarter turns: each image keeps its pixels
    assert torch.equal(a.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_cosine_schedule_warms_up_then_decays():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 1.0, "lr_scale": 0.5}])
    sched = cosine_schedule(opt, total_steps=10, warmup_steps=2, min_lr=0.1)
    lrs = []
    for s in range(10):
        sched.step_update(s)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:3] == pytest.approx([0.25, 0.5, 0.5])  # (s + 1) / warmup, then the peak
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    assert lrs[-1] > 0.05 and lrs[-1] < 0.1  # towards min_lr * lr_scale


def test_weight_decay_groups_spare_biases_norms_and_named_tokens():
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    m.register_parameter("cls_token", torch.nn.Parameter(torch.zeros(1, 1, 3)))
    decay, no = weight_decay_groups(m, 0.05, no_decay=("*token*",))
    assert decay["weight_decay"] == 0.05 and len(decay["params"]) == 1  # the Linear weight
    assert no["weight_decay"] == 0.0 and len(no["params"]) == 4


def _fit(epochs, max_steps=None, state=None, model=None, seen=None, checkpoints=None):
    torch.manual_seed(0)
    data = torch.randn(12, 4)
    y = data @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    model = model or torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def batches(st):
        return [(data[i : i + 4], y[i : i + 4]) for i in range(4 * st.step_in_epoch, 12, 4)]

    def step(batch, st):
        if seen is not None:
            seen.append(st.step)
        return ((model(batch[0]).squeeze(1) - batch[1]) ** 2).mean(), None

    state = train_loop(
        model,
        opt,
        batches,
        step,
        epochs=epochs,
        steps_per_epoch=3,
        max_steps=max_steps,
        state=state,
        checkpoint=None if checkpoints is None else (lambda st: checkpoints.append(st.step)),
    )
    return model, state


def test_loop_resumes_mid_epoch_to_the_same_weights():
    whole, st = _fit(2)
    assert (st.epoch, st.step, st.step_in_epoch) == (2, 6, 0)
    marks: list[int] = []
    part, st = _fit(2, max_steps=4, checkpoints=marks)
    assert (st.epoch, st.step, st.step_in_epoch, st.stopped) == (1, 4, 1, True)
    assert marks == [3, 4]  # after epoch 1, then where it stopped
    resumed = LoopState(st.epoch, st.step, st.step_in_epoch)
    part, st = _fit(2, state=resumed, model=part)
    assert st.step == 6
    for a, b in zip(whole.parameters(), part.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_loop_stops_on_a_non_finite_loss_before_the_weights_change():
    model = torch.nn.Linear(2, 1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(batch, st):
        return model(batch).sum() * float("nan"), None

    with pytest.raises(ValueError, match="nan at step 0"):
        train_loop(
            model,
            opt,
            lambda st: [torch.ones(3, 2)],
            step,
            epochs=1,
            steps_per_epoch=1,
            nonfinite=lambda v, st: ValueError(f"{v} at step {st.step}"),
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_loop_early_stop_from_the_epoch_hook():
    ends: list[int] = []
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    st = train_loop(
        model,
        opt,
        lambda st: [torch.ones(3, 2)] * 2,
        lambda b, st: (model(b).pow(2).mean(), None),
        epochs=10,
        steps_per_epoch=2,
        on_epoch_end=lambda st, complete: ends.append(st.epoch) or st.epoch == 2,
    )
    assert ends == [0, 1, 2] and st.epoch == 3 and st.step == 6 and np.isfinite(st.seconds)
