"""Stage 1's inputs: the RecBole benchmark files and the item text, read as plain TSV (stage 1 must
not import RecBole), and the prefixes they hold (``prefix_key`` is the join with stage 2)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import utf8_error
from .errors import IntentError
from .keys import prefix_key
from .settings import dataset_dir

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Sample:
    """One benchmark line: a prefix and its target."""

    split: str
    session_id: Optional[str]
    prefix: Tuple[str, ...]
    target: Optional[str]

    @property
    def key(self) -> str:
        return prefix_key(self.prefix)


def inter_path(settings: Mapping[str, Any], split: str) -> Path:
    ds = str(settings["dataset"])
    return dataset_dir(settings) / f"{ds}.{split}.inter"


def itemtext_path(settings: Mapping[str, Any]) -> Path:
    ds = str(settings["dataset"])
    return dataset_dir(settings) / f"{ds}.itemtext"


def _column(fields: List[str], name: str) -> Optional[int]:
    for i, f in enumerate(fields):
        if f.split(":", 1)[0] == name:
            return i
    return None


def read_split(settings: Mapping[str, Any], split: str) -> List[Sample]:
    """The samples of ``<ds>.<split>.inter`` (header ``session_id:token item_id_list:token_seq item_id:token``)."""
    path = inter_path(settings, split)
    item = str(settings.get("ITEM_ID_FIELD") or "item_id")
    list_field = item + str(settings.get("LIST_SUFFIX") or "_list")
    if not path.is_file():
        raise IntentError(
            f"benchmark file {path} not found: convert the dataset first (recbole_llm4sbr.data.converters) "
            f"or point --data_path at the folder that holds {settings['dataset']}/"
        )
    try:
        return _read_split(path, split, list_field, item)
    except UnicodeDecodeError:
        raise utf8_error(path, IntentError) from None


def _read_split(path: Path, split: str, list_field: str, item: str) -> List[Sample]:
    fix = "Fix: correct that line (or convert the dataset again with recbole_llm4sbr.data.converters)"
    samples: List[Sample] = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        col_list = _column(header, list_field)
        if col_list is None:
            raise IntentError(f"{path}: the header has no {list_field}:token_seq column (header: {' '.join(header)}). "
                              f"Fix: the first line must be 'session_id:token<TAB>{list_field}:token_seq<TAB>"
                              f"{item}:token'")
        col_sess, col_item = _column(header, "session_id"), _column(header, item)
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) != len(header):
                raise IntentError(f"{path}, line {lineno}: {len(cols)} tab-separated fields, the header has "
                                  f"{len(header)} ({' '.join(header)}). {fix}")
            prefix = tuple(cols[col_list].split())
            if not prefix:
                raise IntentError(f"{path}, line {lineno}: empty {list_field}; every sample needs a non-empty "
                                  f"prefix. {fix}")
            samples.append(
                Sample(
                    split,
                    cols[col_sess] if col_sess is not None else None,
                    prefix,
                    cols[col_item] if col_item is not None else None,
                )
            )
    return samples


def read_samples(settings: Mapping[str, Any]) -> List[Sample]:
    """All samples of the three benchmark files, train then valid then test."""
    return [s for split in SPLITS for s in read_split(settings, split)]


def unique_prefixes(samples: Sequence[Sample]) -> Dict[str, Tuple[str, ...]]:
    """``{prefix_key: tokens}`` in first-seen order."""
    out: Dict[str, Tuple[str, ...]] = {}
    for s in samples:
        out.setdefault(s.key, s.prefix)
    return out


def read_item_text(settings: Mapping[str, Any]) -> Dict[str, str]:
    """``{item token: text}`` from ``<ds>.itemtext`` (header ``item_id<TAB>text``)."""
    path = itemtext_path(settings)
    if not path.is_file():
        raise IntentError(
            f"item text file {path} not found: stage 1 needs one text per item. Fix: write it as UTF-8 "
            f"with the header line 'item_id<TAB>text' and one line '<item token><TAB><text>' per item "
            f"token of the .inter files (the text without tabs or newlines, e.g. '42<TAB>Heat (1995) -- "
            f"Action|Crime'); the data converters (python -m recbole_llm4sbr.data.converters) write it "
            f"for the datasets they build")
    try:
        return _read_item_text(path)
    except UnicodeDecodeError:
        raise utf8_error(path, IntentError) from None


def _read_item_text(path: Path) -> Dict[str, str]:
    texts: Dict[str, str] = {}
    lines: Dict[str, int] = {}  # item token -> the line that gave its text
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n")
        if not header:
            raise IntentError(f"item text file {path} is empty: expected a header 'item_id<TAB>text' and one line per item")
        if header.split("\t")[0].split(":")[0] != "item_id" or "\t" not in header:
            raise IntentError(f"item text file {path} is malformed: its first line must be the header 'item_id<TAB>text', got {header[:80]!r}")
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            if "\t" not in line:
                raise IntentError(f"item text file {path} is malformed at line {lineno}: expected 'item_id<TAB>text', got {line[:80]!r}")
            tok, text = line.split("\t", 1)
            tok = tok.strip()
            if tok in lines:
                raise IntentError(f"item text file {path}: item {tok!r} is on line {lines[tok]} and again on line "
                                  f"{lineno}; one text per item. Fix: delete one of the two lines (or convert the "
                                  f"dataset again with recbole_llm4sbr.data.converters)")
            lines[tok] = lineno
            texts[tok] = text.strip()
    if not texts:
        raise IntentError(f"item text file {path} has no items: expected one 'item_id<TAB>text' line per item")
    return texts


def check_item_text(settings: Mapping[str, Any], prefixes: Mapping[str, Sequence[str]], texts: Mapping[str, str]) -> None:
    missing = sorted({t for p in prefixes.values() for t in p if t not in texts})
    if missing:
        shown = ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise IntentError(
            f"{len(missing)} item tokens used in the sessions of {settings['dataset']} have no text in "
            f"{itemtext_path(settings)} ({shown}): add an 'item_id<TAB>text' line for each, or re-run the data converter"
        )


def file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
