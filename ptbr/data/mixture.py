"""Weighted mixing of several published datasets: their common manifest (the datasets themselves are read
by ``ptbr.data.stream.build_dataset``, with streaming's own ``Stream(proportion=...)``).

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
from ptbr.data.manifest import read_manifest
from ptbr.errors import DataError

MUST_AGREE = {
    "vocab_size": "vocabulary size",
    "seq_len": "seq_len",
    "eos_id": "end-of-document id",
    "dtype": "token dtype",
}


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
            raise DataError(
                f"data.sources: {spec.source} was tokenized with another tokenizer than {first.source} "
                f"(sha256 {str(tok)[:16]} vs {str(ref_tok)[:16]}); rebuild it with the same tokenizer"
            )
        for key, what in MUST_AGREE.items():
            if m.get(key) != ref.get(key):
                raise DataError(
                    f"data.sources: {spec.source} has {what} {m.get(key)}, {first.source} has "
                    f"{ref.get(key)}; all sources of a mixture must match"
                )
    total = sum(s.weight for s in specs)
    parts = [
        {
            "source": s.source,
            "name": s.label(),
            "weight": s.weight / total,
            "dataset_hash": m["dataset_hash"],
            "splits": m["splits"],
        }
        for s, m in zip(specs, manifests)
    ]
    identity = json.dumps([[p["dataset_hash"], round(p["weight"], 12)] for p in parts]).encode()
    splits = {
        split: {
            "samples": sum(int(m["splits"][split]["samples"]) for m in manifests),
            "shards": sum(int(m["splits"][split]["shards"]) for m in manifests),
        }
        for split in ref["splits"]
        if all(split in m["splits"] for m in manifests)
    }
    return {**ref, "dataset_hash": sha256_bytes(identity), "splits": splits, "mixture": parts}
