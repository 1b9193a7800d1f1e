"""Weighted mixing of several published datasets: streaming's own ``Stream(proportion=...)``.

Streaming draws ``epoch_size x weight / sum(weights)`` samples from each stream per epoch (sub-sampling
or repeating, seeded by the shuffle seed), then shuffles them together; its resume state covers all
streams, so an elastic resume continues the exact sample order as with one dataset. The sources must
agree on everything a sample's meaning depends on (tokenizer, vocabulary, end-of-document id,
seq_len, token dtype); the mixture's identity (``dataset_hash``) is a hash of the sources' hashes and
weights, so a checkpoint refuses to continue on another mixture.
"""

from __future__ import annotations

import json
from typing import Any

from ptbr.data.hashing import sha256_bytes
from ptbr.data.stream import (
    build_dataset,
    join_source,
    prepare_split_cache,
    read_manifest,
    streaming_options,
    streaming_tempdir,
)
from ptbr.errors import DataError

MUST_AGREE = {"vocab_size": "vocabulary size", "seq_len": "seq_len", "eos_id": "end-of-document id",
              "dtype": "token dtype"}


def read_mixture(specs: list[Any]) -> dict[str, Any]:
    """The manifest of a mixture (``specs``: objects with ``source``, ``weight`` and ``label()``); one source:
    its own manifest. Sources that disagree with the first are refused with one line naming them."""
    manifests = [read_manifest(s.source) for s in specs]
    if len(specs) == 1:
        return manifests[0]
    first, ref = specs[0], manifests[0]
    ref_tok = (ref.get("tokenizer") or {}).get("sha256")
    for spec, m in zip(specs[1:], manifests[1:]):
        tok = (m.get("tokenizer") or {}).get("sha256")
        if tok != ref_tok:
            raise DataError(f"data.sources: {spec.source} was tokenized with another tokenizer than {first.source} "
                            f"(sha256 {str(tok)[:16]} vs {str(ref_tok)[:16]}); rebuild its shards with the same "
                            "tokenizer.json")
        for key, what in MUST_AGREE.items():
            if m.get(key) != ref.get(key):
                raise DataError(f"data.sources: {spec.source} has {what} {m.get(key)}, {first.source} has "
                                f"{ref.get(key)}; all sources of a mixture must match")
    total = sum(s.weight for s in specs)
    parts = [{"source": s.source, "name": s.label(), "weight": s.weight / total, "dataset_hash": m["dataset_hash"],
              "splits": m["splits"]} for s, m in zip(specs, manifests)]
    identity = json.dumps([[p["dataset_hash"], round(p["weight"], 12)] for p in parts]).encode()
    splits = {split: {"samples": sum(int(m["splits"][split]["samples"]) for m in manifests),
                      "shards": sum(int(m["splits"][split]["shards"]) for m in manifests)}
              for split in ref["splits"] if all(split in m["splits"] for m in manifests)}
    return {**ref, "dataset_hash": sha256_bytes(identity), "splits": splits, "mixture": parts}


def build_mixed_dataset(specs: list[Any], manifest: dict[str, Any], split: str, *, cache_root: str,
                        batch_size: int, shuffle: bool, seed: int, num_canonical_nodes: int | None = None,
                        download_retry_s: float = 300.0, download_timeout_s: float = 60.0,
                        **streaming_kwargs: Any):
    """A TokenDataset drawing from every source of ``manifest["mixture"]`` in proportion to its weight;
    one source: :func:`ptbr.data.stream.build_dataset`."""
    common = dict(cache_root=cache_root, batch_size=batch_size, shuffle=shuffle, seed=seed,
                  num_canonical_nodes=num_canonical_nodes, download_retry_s=download_retry_s,
                  download_timeout_s=download_timeout_s)
    if "mixture" not in manifest:
        return build_dataset(specs[0].source, split, **common, **streaming_kwargs)
    from streaming import Stream

    from ptbr.data.token_dataset import TokenDataset

    streams = []
    for part in manifest["mixture"]:
        source = part["source"]
        local = prepare_split_cache(source, split, cache_root, part)  # part holds its dataset_hash and splits
        streams.append(Stream(remote=join_source(source, split), local=str(local), proportion=part["weight"]))
    num_canonical_nodes = streaming_options(streaming_kwargs, num_canonical_nodes, download_retry_s,
                                            download_timeout_s)
    streaming_kwargs.setdefault("predownload", 8 * batch_size)
    with streaming_tempdir():
        return TokenDataset(manifest=manifest, source=specs[0].source, retry_window_s=download_retry_s,
                            streams=streams, batch_size=batch_size, shuffle=shuffle, shuffle_seed=seed,
                            num_canonical_nodes=num_canonical_nodes, **streaming_kwargs)
