"""One featurize run, one file: the settings written beside the embeddings, replayed by
``--config`` (a no-op once every block is done), flags beside it override it, unknown keys
refused in one line; the store stays valid (``store verify``, root untouched)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
import yaml
from typer.testing import CliRunner

from cellbag.cli import app
from cellbag.errors import CellbagError
from cellbag.featurize import FeaturizeConfig, FeaturizeError, run_featurize
from cellbag.featurize.config import CONFIG_NAME, config_path, read_config
from cellbag.store import Store
from cellbag.store.feature_store import foreign_entries

runner = CliRunner()
TINY_ARGS = [
    "--weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--device",
    "cpu",
    "--workers",
    "1",
    "--chunk-rows",
    "4",
    "--block-rows",
    "8",
    "-q",
]


def _settings(path) -> dict:
    return yaml.safe_load(open(path).read())


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, feat_cohort):
    """One CLI run of the tiny encoder into a fresh store."""
    store = tmp_path_factory.mktemp("cfg") / "store.zarr"
    res = runner.invoke(app, ["featurize", str(feat_cohort.root), str(store), *TINY_ARGS])
    assert res.exit_code == 0, res.output
    s = Store.open(store)
    (eid,) = s.encoders()
    return store, eid, res.output


def test_the_run_writes_its_settings_beside_the_embeddings(cli_run, feat_cohort) -> None:
    store, eid, output = cli_run
    path = store / "embeddings" / eid / CONFIG_NAME
    assert path.is_file() and config_path(store, eid) == str(path)
    assert f"settings:{path}" in "".join(output.split())  # the console may wrap the path
    doc = _settings(path)
    assert doc["cellbag"] == "FeaturizeConfig"
    assert doc["data"] == str(feat_cohort.root) and doc["store"] == str(store)
    assert doc["encoder"] == "tf_efficientnet_lite0" and doc["weights"] == "none"
    assert (doc["image_size"], doc["batch_size"], doc["device"]) == (32, 8, "cpu")
    assert (doc["chunk_rows"], doc["block_rows"], doc["workers"]) == (4, 8, 1)
    assert doc["force"] is False and doc["update"] is False
    # --crop auto / --stain auto are recorded as what they resolved to on these smear crops
    assert (doc["crop"], doc["stain"]) == (0.57, "reinhard")
    assert eid in path.read_text().splitlines()[0]  # the header names the encoder id
    assert read_config(path) == FeaturizeConfig(**{k: v for k, v in doc.items() if k != "cellbag"})
    # the store stays valid: nothing foreign at its root, verify passes
    assert foreign_entries(store) == []
    res = runner.invoke(app, ["store", "verify", str(store)])
    assert res.exit_code == 0, res.output


def test_config_replays_without_recomputing(cli_run) -> None:
    store, eid, _ = cli_run
    path = store / "embeddings" / eid / CONFIG_NAME
    root_json = (store / "zarr.json").read_bytes()
    before = Store.open(store).embeddings_digest(eid)
    res = runner.invoke(app, ["featurize", "--config", str(path), "-q"])
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.output and f"encoder id: {eid} (complete)" in res.output
    assert Store.open(store).embeddings_digest(eid) == before
    assert (store / "zarr.json").read_bytes() == root_json


def test_a_flag_beside_config_overrides_it(cli_run, tmp_path) -> None:
    store, eid, _ = cli_run
    path = store / "embeddings" / eid / CONFIG_NAME
    # how the run goes: same encoder id, nothing recomputed, the file keeps the new value
    res = runner.invoke(app, ["featurize", "--config", str(path), "--batch-size", "4", "-q"])
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output
    assert _settings(path)["batch_size"] == 4
    # what it computes: a new encoder id, its own file; the flag's value is recorded there
    res = runner.invoke(app, ["featurize", "--config", str(path), "--image-size", "40", "-q"])
    assert res.exit_code == 0, res.output
    (other,) = set(Store.open(store).encoders()) - {eid}
    doc = _settings(store / "embeddings" / other / CONFIG_NAME)
    assert doc["image_size"] == 40 and doc["weights"] == "none"
    assert _settings(path)["image_size"] == 32  # the first encoder's file is its own


def test_force_is_not_replayed(tmp_path, feat_cohort) -> None:
    store = tmp_path / "s.zarr"
    args = ["featurize", str(feat_cohort.root), str(store), *TINY_ARGS]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, [*args, "--force"])
    assert res.exit_code == 0 and "embedded" in res.output, res.output
    (eid,) = Store.open(store).encoders()
    path = store / "embeddings" / eid / CONFIG_NAME
    assert _settings(path)["force"] is False
    res = runner.invoke(app, ["featurize", "--config", str(path), "-q"])
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output


def test_an_unknown_key_is_one_line_naming_it_and_the_file(cli_run, tmp_path) -> None:
    store, eid, _ = cli_run
    doc = _settings(store / "embeddings" / eid / CONFIG_NAME)
    doc["batchsize"] = 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    res = runner.invoke(app, ["featurize", "--config", str(bad)])
    assert res.exit_code != 0
    assert isinstance(res.exception, FeaturizeError) and isinstance(res.exception, CellbagError)
    msg = str(res.exception)
    assert "\n" not in msg and "batchsize" in msg and str(bad) in msg
    other = tmp_path / "cv.yaml"
    other.write_text("cellbag: CVConfig\nfolds: 5\n")
    res = runner.invoke(app, ["featurize", "--config", str(other)])
    assert isinstance(res.exception, FeaturizeError) and "not a FeaturizeConfig" in str(
        res.exception
    )


def test_without_data_or_config_the_cli_says_what_to_give() -> None:
    res = runner.invoke(app, ["featurize"])
    assert res.exit_code == 2 and "--config" in res.output


def test_python_api_takes_a_config(tmp_path, feat_cohort, tiny_spec, feat_kw) -> None:
    cfg = FeaturizeConfig(
        data=feat_cohort.root,
        store=tmp_path / "api.zarr",
        encoder=tiny_spec["name"],
        weights=tiny_spec["weights"],
        image_size=tiny_spec["image_size"],
        device="cpu",
        **feat_kw,
    )
    r = run_featurize(cfg)
    assert r.complete and r.config_path == config_path(cfg.store, r.encoder_id)
    # the file holds what auto resolved to (smear crops: centre 0.57, Reinhard)
    assert read_config(r.config_path) == dataclasses.replace(cfg, crop=0.57, stain="reinhard")
    again = run_featurize(read_config(r.config_path))
    assert again.encoder_id == r.encoder_id and again.cells_computed == 0
    # the keyword API writes the same file
    kw = run_featurize(feat_cohort, cfg.store, cfg.encoder, **{**cfg.kwargs(), "batch_size": 2})
    assert kw.cells_computed == 0 and read_config(kw.config_path).batch_size == 2


def test_a_url_store_gets_its_settings_through_fsspec(tmp_path, feat_cohort, tiny_spec, feat_kw):
    import fsspec

    url = f"memory://cellbag-cfg-{uuid.uuid4().hex}/s.zarr"
    r = run_featurize(
        feat_cohort.root,
        url,
        tiny_spec["name"],
        weights=tiny_spec["weights"],
        image_size=tiny_spec["image_size"],
        device="cpu",
        **feat_kw,
    )
    assert r.complete and r.config_path == config_path(url, r.encoder_id)
    with fsspec.open(r.config_path, "rt") as fh:
        assert yaml.safe_load(fh)["store"] == url
    assert read_config(r.config_path).image_size == tiny_spec["image_size"]
