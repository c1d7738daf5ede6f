"""A tiny session dataset in the plugin's on-disk format (DESIGN.md), for fast end-to-end tests."""
from __future__ import annotations

import random
from pathlib import Path

HEADER = "session_id:token\titem_id_list:token_seq\titem_id:token\n"


#: small layers every supported base trains with on the tiny data, and the bases that need more
SMALL = {"embedding_size": 16, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1}
PER_BASE = {
    "NARM": {"hidden_size": 24},  # views wider than the vector the base scores with
    "GRU4Rec": {"hidden_size": 24},
    "FEARec": {"n_layers": 2},  # its filter slide step divides by n_layers - 1
    "NextItNet": {"block_num": 1},
    "LightSANs": {"k_interests": 3},
    "SINE": {"prototype_size": 8},
}


def tiny_width(folder, name="tiny"):
    """The longest prefix of a dataset written by ``write_tiny_dataset`` (its MAX_ITEM_LIST_LENGTH)."""
    return max(len(line.split("\t")[1].split())
               for part in ("train", "valid", "test")
               for line in (Path(folder) / f"{name}.{part}.inter").read_text().splitlines()[1:])


def write_tiny_dataset(root, name="tiny", n_sessions=120, n_items=30, seed=0, max_len=8):
    """Sessions drawn from a few item 'topics' so that there is signal to learn; returns the folder."""
    rng = random.Random(seed)
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    topics = [list(range(1, n_items + 1))[i::3] for i in range(3)]
    rows = []
    for s in range(n_sessions):
        topic = topics[s % 3]
        length = rng.randint(3, max_len)
        start = rng.randrange(len(topic))
        seq = [str(100 + topic[(start + k) % len(topic)]) for k in range(length)]
        rows.append((f"s{s}", seq[:-1], seq[-1]))
    cut1, cut2 = int(n_sessions * 0.7), int(n_sessions * 0.85)
    for part, chunk in (("train", rows[:cut1]), ("valid", rows[cut1:cut2]), ("test", rows[cut2:])):
        with open(folder / f"{name}.{part}.inter", "w", encoding="utf-8") as f:
            f.write(HEADER)
            for sid, prefix, target in chunk:
                f.write(f"{sid}\t{' '.join(prefix)}\t{target}\n")
    genres = ["Drama", "Comedy", "Horror"]
    with open(folder / f"{name}.itemtext", "w", encoding="utf-8") as f:
        f.write("item_id\ttext\n")
        for i in range(1, n_items + 1):
            f.write(f"{100 + i}\tMovie number {i} ({1990 + i % 10}) -- {genres[i % 3]}\n")
    return folder


def synthetic_intents(folder, views=("long", "short"), d_text=12, seed=0, meta=None, path=None):
    """A stand-in for stage 1's output on a dataset written by ``write_tiny_dataset``: random intent
    vectors for every prefix key (raw = half of them) and random unit catalogue text embeddings.
    Tests monkeypatch ``data.intents.load_dataset_intents`` to return it (no encoder, no LLM)."""
    import numpy as np

    from recbole_llm4sbr.data.intents import DatasetIntents
    from recbole_llm4sbr.intent.keys import prefix_key

    folder = Path(folder)
    keys, items = set(), set()
    for part in ("train", "valid", "test"):
        for line in (folder / f"{folder.name}.{part}.inter").read_text().splitlines()[1:]:
            _, prefix, target = line.split("\t")
            keys.add(prefix_key(prefix.split()))
            items.update(prefix.split() + [target])
    keys, items = sorted(keys), sorted(items)
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(len(keys), len(views), d_text)).astype(np.float32)
    item_vec = rng.normal(size=(len(items), d_text)).astype(np.float32)
    item_vec /= np.linalg.norm(item_vec, axis=1, keepdims=True)
    return DatasetIntents(Path(path) if path else folder / "intent", keys, list(views), vec, vec * 0.5,
                          dict(meta or {}), {k: i for i, k in enumerate(keys)}, items, item_vec)


def use_synthetic_intents(tmp_path, monkeypatch):
    """Write the tiny dataset into ``tmp_path`` and make stage 2 load a synthetic intent table for it
    (no stage 1): ``(tmp_path, table)``."""
    import torch

    from recbole_llm4sbr.data import intents as intents_module

    torch.set_num_threads(1)
    table = synthetic_intents(write_tiny_dataset(tmp_path))
    monkeypatch.setattr(intents_module, "load_dataset_intents", lambda config, logger=None: table)
    return tmp_path, table


def build_tiny_model(tmp_path, model="LLM4SBR_SRGNN", **overrides):
    """``quick_start.build`` of a small ``model`` on the tiny dataset in ``tmp_path``."""
    from recbole_llm4sbr.quick_start import build, make_config

    config_dict = {"data_path": str(tmp_path), "epochs": 1, "show_progress": False, "state": "WARNING",
                   "checkpoint_dir": str(tmp_path / "saved"), "train_batch_size": 32, "embedding_size": 16,
                   "hidden_size": 16, "intent_strength": 1.0}  # the intent term in use (some bases ship 0)
    config_dict.update(overrides)
    config = make_config(model, "tiny", config_dict=config_dict, read_cmd_line=False)
    return build(config)


def build_tiny_batch(tmp_path, model="LLM4SBR_SRGNN", **overrides):
    """``(dataset, the first training batch, model)`` of ``build_tiny_model``."""
    dataset, (train, _, _), built, _ = build_tiny_model(tmp_path, model, **overrides)
    return dataset, next(iter(train)), built


def as_if_trained(model, std=0.1, seed=0):
    """Give the residual fusion's intent term (zero at the start: the base's scores) the non-zero
    weights training would give it, so that tests of how intents move the scores can see them."""
    import torch

    if getattr(model, "residual", None) is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            weight = model.residual.linear.weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * std)
    return model
