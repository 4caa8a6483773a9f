"""Which encoder a user means: an id, a model name that matches one encoder, or none at all."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellbag.store.errors import EncoderNotReady

if TYPE_CHECKING:
    from cellbag.store.feature_store import Store


def describe_encoders(store: Store) -> str:
    """``id (name, dim N)`` for every encoder of the store, comma-separated."""
    parts = []
    for eid in store.encoders():
        a = store.zarr_group["embeddings"][eid].attrs
        parts.append(f"{eid} ({a.get('name', '?')}, dim {a.get('dim', '?')})")
    return ", ".join(parts) or "none"


def resolve_encoder(store: Store, name_or_id: str | None = None) -> str:
    """The encoder id meant by ``name_or_id``: an exact id; else a name (the preset or
    model name recorded at featurize/import) that matches exactly one encoder; with None,
    the store's only encoder. Errors list the ids with their names and dims."""
    have = store.encoders()
    if name_or_id is None or name_or_id == "":
        if len(have) == 1:
            return have[0]
        if not have:
            raise EncoderNotReady(
                f"{store.path}: no embeddings in this store yet; run "
                f"`cellbag featurize DATA {store.path}` or `cellbag store import`"
            )
        raise EncoderNotReady(
            f"{store.path}: several encoders, pick one with --encoder (an id or a name): "
            f"{describe_encoders(store)}"
        )
    if name_or_id in have:
        return name_or_id
    hits = []
    for eid in have:
        a = store.zarr_group["embeddings"][eid].attrs
        if name_or_id in (a.get("name"), a.get("model")):
            hits.append(eid)
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise EncoderNotReady(
            f"{store.path}: {name_or_id!r} names several encoders; pick one by id: "
            f"{describe_encoders(store)}"
        )
    root = store.attrs.get("cohort", {}).get("root", "DATA")
    raise EncoderNotReady(
        f"{store.path}: no embeddings for encoder {name_or_id!r} (no encoder has this id or "
        f"name; the store holds: {describe_encoders(store)}); compute them with "
        f"`cellbag featurize {root} {store.path} --encoder {name_or_id}`"
    )
