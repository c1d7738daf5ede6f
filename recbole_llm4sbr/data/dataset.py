"""``LLM4SBRDataset``: RecBole session benchmark files + the prefix key + stage-1 intent vectors.

Stock models (``--model=SRGNN``) load through it too, so both sides of a comparison see the same
files, split and item ids; only LLM4SBR models (``load_intent: True``) read the intent table.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.utils import FeatureSource, FeatureType

from recbole_llm4sbr.errors import ConfigError, LLM4SBRError, utf8_error
from recbole_llm4sbr.intent.errors import IntentError
from recbole_llm4sbr.intent.keys import prefix_key

REQUIRED_COLUMNS = ("item_id_list:token_seq", "item_id:token")
#: the training-only text heads (model/semantic.py) that read ``item_text_vectors``
TEXT_HEAD_WEIGHTS = ("text_target_weight", "eimf_weight")


class DatasetFileError(LLM4SBRError):
    """A dataset file is missing, empty or malformed; the message names the file and the fix."""


def check_benchmark_files(data_dir: str, dataset: str, parts, encoding: str = "utf-8") -> None:
    """Fail early, naming the file, on what RecBole would report obscurely (or not at all): a missing
    or empty file, a header without the session columns, and on EVERY line a field count other than
    the header's, an empty prefix or target (RecBole would read a missing target as an item), or
    bytes that are not ``encoding`` (with the line and byte offset)."""
    fix = (f"Fix: convert raw data with `python -m recbole_llm4sbr.data.converters ...` or write "
           f"{dataset}.<part>.inter with the header 'session_id:token<TAB>item_id_list:token_seq<TAB>item_id:token'.")
    for part in parts:
        path = os.path.join(data_dir, f"{dataset}.{part}.inter")
        if not os.path.isfile(path):
            raise DatasetFileError(f"Dataset '{dataset}': missing file {path}. {fix}")
        try:
            _check_lines(path, dataset, encoding, fix)
        except UnicodeDecodeError:
            if encoding.replace("-", "").replace("_", "").lower() != "utf8":
                raise DatasetFileError(f"Dataset '{dataset}': {path} is not {encoding} text. Fix: set `encoding` "
                                       f"to the file's encoding, or save it as UTF-8") from None
            raise utf8_error(path, DatasetFileError) from None


def _check_lines(path: str, dataset: str, encoding: str, fix: str) -> None:
    with open(path, "rb") as f:
        header = f.readline().decode(encoding).rstrip("\r\n")
        if not header:
            raise DatasetFileError(f"Dataset '{dataset}': {path} is empty. {fix}")
        columns = header.split("\t")
        absent = [c for c in REQUIRED_COLUMNS if c not in columns]
        if absent:
            raise DatasetFileError(f"Dataset '{dataset}': {path} has header {columns}, missing {absent}. {fix}")
        required = [(c, columns.index(c)) for c in REQUIRED_COLUMNS]
        samples = 0
        for lineno, raw in enumerate(f, start=2):
            line = raw.decode(encoding).rstrip("\r\n")
            if not line.strip():
                continue  # RecBole (pandas) skips blank lines
            fields = line.split("\t")
            if len(fields) != len(columns):
                raise DatasetFileError(
                    f"Dataset '{dataset}': {path}, line {lineno}: {len(fields)} tab-separated fields, the header "
                    f"{len(columns)} ({' '.join(columns)}). Fix: correct or delete that line, or convert the "
                    f"dataset again.")
            for name, i in required:
                if not fields[i].strip():
                    raise DatasetFileError(
                        f"Dataset '{dataset}': {path}, line {lineno}: the {name.split(':')[0]} field is empty. "
                        f"Fix: correct or delete that line, or convert the dataset again.")
            samples += 1
        if not samples:
            raise DatasetFileError(f"Dataset '{dataset}': {path} has a header but no samples. {fix}")


#: ``intent_buffer_dtype`` -> the dtype of the in-memory intent buffer (``intent_mmap: False``)
BUFFER_DTYPES = {"float16": np.float16, "float32": np.float32}


def buffer_dtype(config) -> np.dtype:
    """``intent_buffer_dtype`` (float16 | float32; unset = float16)."""
    value = str(config["intent_buffer_dtype"] or "float16").strip().lower()
    if value not in BUFFER_DTYPES:
        raise ConfigError(f"intent_buffer_dtype={value!r}: use one of {', '.join(BUFFER_DTYPES)}. "
                          "Fix: --intent_buffer_dtype=float32")
    return np.dtype(BUFFER_DTYPES[value])


def copy_rows(source: np.ndarray, rows: np.ndarray, block_rows: int = 512, dtype=np.float32) -> np.ndarray:
    """``[1 + len(rows), ...]`` of ``dtype``: row 0 zero (padding), then ``source[rows]``, read in row blocks
    so that no second full-size temporary exists; the pages each block read from a mapped ``source``
    are dropped from this process (they stay in the page cache: ``intent.table.drop_resident_pages``;
    512 rows map in at most ~32 MB, model/mapped_intents.py ``FAULT_AROUND_BYTES``)."""
    from recbole_llm4sbr.intent.table import drop_resident_pages

    out = np.zeros((len(rows) + 1,) + tuple(source.shape[1:]), dtype=dtype)
    order = np.argsort(rows, kind="stable")  # the mapping's pages in order
    for s in range(0, len(rows), block_rows):
        block = order[s : s + block_rows]
        out[1 + block] = source[rows[block]]
        drop_resident_pages(source)
    return out


class LLM4SBRDataset(SequentialDataset):
    """SequentialDataset over benchmark files, with a ``prefix_key`` token field on every sample.

    The key (``intent.keys.prefix_key`` of the prefix's item tokens) is added when the files load,
    so any RecBole session benchmark dataset works; RecBole remaps it to ids like any token field
    and every batch carries it. ``intent_vectors[id]`` is the stage-1 intent of that prefix,
    ``[num_keys, n_views, d_text]``, row 0 (padding) zero, when the table is copied into memory
    (``intent_mmap``, data/intents.py; float16 unless ``intent_buffer_dtype: float32``); when it is mapped, ``intent_vectors`` is None and
    ``intent_source[intent_rows[id]]`` is that row (``intent_source``: the read-only mapping,
    ``intent_rows``: int64 ``[num_keys]``, -1 for the padding key). ``item_text_vectors[item id]`` is the
    item's text embedding from the same table (``[item_num, d_text]``, row 0 zero; None when the table
    has none, or when neither of ``TEXT_HEAD_WEIGHTS`` is above 0), the target of the text heads.
    """

    def __init__(self, config):
        self.key_field = config["PREFIX_KEY_FIELD"] or "prefix_key"
        parts = config["benchmark_filename"]
        if not parts:
            raise DatasetFileError(
                f"Dataset '{config['dataset']}': LLM4SBR needs session benchmark files. Fix: set "
                "benchmark_filename: [train, valid, test] (properties/dataset/<ds>.yaml) and convert the data.")
        check_benchmark_files(config["data_path"], config["dataset"], parts, str(config["encoding"] or "utf-8"))
        super().__init__(config)
        self.intent_views, self.intent_vectors, self.intent_table_path = [], None, None
        self.intent_source, self.intent_rows = None, None  # a mapped table (intent_mmap), else None
        self.item_text_vectors = None
        if config["load_intent"]:
            self._attach_intents()

    def _load_data(self, token, dataset_path):
        super()._load_data(token, dataset_path)
        seq_field = self.iid_field + self.config["LIST_SUFFIX"]
        self.inter_feat[self.key_field] = [prefix_key(seq) for seq in self.inter_feat[seq_field].values]
        self.set_field_property(self.key_field, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)

    def _attach_intents(self):
        from recbole_llm4sbr.data.intents import load_dataset_intents, wants_mmap

        table = load_dataset_intents(self.config, self.logger)
        tokens = self.field2id_token[self.key_field]
        rows = table.rows_of(tokens[1:])
        missing = [tok for tok, row in zip(tokens[1:], rows) if row < 0]
        if missing:
            raise IntentError(
                f"Intent table {table.path} does not match dataset '{self.dataset_name}': "
                f"{len(missing)} prefixes have no intent (e.g. {missing[:3]}). It is stale. Fix: rerun "
                f"`python -m recbole_llm4sbr.intent --dataset={self.dataset_name} --force` (or delete that folder)."
            )
        source = table.array(self.config)
        self.intent_views = list(table.views)
        self.intent_table_path = str(table.path)
        if wants_mmap(self.config, len(tokens), source.shape[1:]):
            # the table stays mapped; the model gathers each batch's rows (row -1: padding, zero)
            self.intent_source = source
            self.intent_rows = np.concatenate([np.array([-1], dtype=np.int64), rows])
        else:
            # float16 by default (intent_buffer_dtype): half the RAM; the model casts each batch's rows
            # to float32, so only the stored values are rounded (a float16 table's rows are exact)
            self.intent_vectors = torch.from_numpy(copy_rows(source, rows, dtype=buffer_dtype(self.config)))
        if any(float(self.config[key] or 0.0) > 0 for key in TEXT_HEAD_WEIGHTS):
            # only the training-only text heads read the catalogue's text embeddings ([items, d_text]
            # float32: 30 MB for 20k items), so nothing else holds them
            item_text = table.item_text_matrix(self.field2id_token[self.iid_field])
            self.item_text_vectors = None if item_text is None else torch.from_numpy(item_text)
