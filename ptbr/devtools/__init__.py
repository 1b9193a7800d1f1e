"""Tools for tests, benchmarks and the local demo -- never imported by training or data code.

* ``local_s3``: a real S3-compatible server (SeaweedFS) on 127.0.0.1 with throw-away keys;
* ``sample_text``: deterministic Portuguese-like documents;
* ``triton_compile_check``: compile the Triton kernels for a GPU target without a GPU.
"""
