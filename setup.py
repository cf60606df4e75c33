"""transformers_rime: generative and discriminative multimodal embeddings (RIME) for Hugging Face.

Install torch first (on CPU machines, the CPU wheel: `pip install torch==2.13.0`), then `pip install -e .[dev]`.
"""

from setuptools import find_packages, setup


extras = {
    "st": ["sentence-transformers>=6.0.1,<7"],
    "train": ["peft>=0.17", "accelerate>=1.10.1", "datasets>=4.7.0"],
    "rl": ["trl>=1.16.0,<1.17"],
    "eval": ["faiss-cpu>=1.8", "pyarrow>=15"],
    "flash": ["flash-attn>=2.6"],
    # `rime serve`: LitServe batches the requests, prometheus-client exports the metrics
    "serve": ["litserve==0.2.19", "prometheus-client>=0.20"],
    "quality": ["ruff>=0.6"],
    "testing": ["pytest>=8", "pytest-timeout>=2.3"],
    # the versions the README's LangChain / LlamaIndex / chromadb recipes are tested with (tests/test_integrations.py);
    # langchain-huggingface 1.2 caps huggingface-hub below 2
    "integrations": [
        "langchain-huggingface==1.2.3",
        "langchain-core==1.8.3",
        "llama-index-core==0.14.25",
        "llama-index-embeddings-huggingface==0.8.0",
        "chromadb==1.5.9",
    ],
}
extras["dev"] = sorted(
    {
        *extras["testing"],
        *extras["quality"],
        *extras["st"],
        *extras["train"],
        *extras["rl"],
        *extras["eval"],
        *extras["serve"],
        # the serving tests call the server with the official client, as applications do
        "openai>=1.40",
        # the peer test (tests/models/test_ume_r1_peer.py) compares against mteb's own UME-R1 wrapper
        "mteb==2.26.0",
    }
)

setup(
    name="transformers_rime",
    version="0.1.0",
    description="RIME: rewrite-driven generative and discriminative multimodal embeddings on Hugging Face",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # model_cards/ (the card template and the released models' cards) is installed as transformers_rime.model_cards
    package_dir={"": "src", "transformers_rime.model_cards": "model_cards"},
    packages=[*find_packages("src"), "transformers_rime.model_cards"],
    package_data={"transformers_rime": ["py.typed"], "transformers_rime.model_cards": ["template.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.17,<6",
        "huggingface-hub<3",
        "safetensors>=0.4",
        "pillow>=10",
        "numpy>=1.24",
        "tqdm>=4.60",
        "jinja2>=3.1",
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["rime=transformers_rime.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
