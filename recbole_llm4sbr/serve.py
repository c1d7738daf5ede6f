"""Serving a trained checkpoint: the top-k next items of one session given as item tokens.

Python::

    from recbole_llm4sbr.serve import recommend
    rec = recommend("saved/LLM4SBR_SRGNN-....pth", ["50", "172", "133"], k=10)
    rec.items, rec.scores, rec.titles, rec.intents  # tokens best first, scores, <ds>.itemtext titles, intents

CLI::

    python -m recbole_llm4sbr.serve --checkpoint=saved/X.pth --items="50 172 133" --k=10 [--json]

A long-running HTTP server over the same ``ServedModel``: ``python -m recbole_llm4sbr.server`` (``server.py``).

Any RecBole checkpoint the plugin's trainer saved works (``LLM4SBR_<Base>`` or a stock model): the
config inside it names the model and the dataset; the dataset is rebuilt from its benchmark files
(for the item vocabulary) and the model loaded once per process (``load``'s cache), so the latency
of a session is the model's, not the loading's.

* ``semantic_at_inference: True`` (LLM4SBR as in the paper) needs the session's intent: a prefix
  already in the intent table uses its row; a new one runs stage 1 for that prefix alone
  (``intent/online.py``: same backend, encoder and catalogue as the table), unless ``online=False``,
  which fails naming the fix. The result carries the intent text and the grounded items per view.
* ``semantic_at_inference: False`` (LLM-free, EIMF): no intent is read and no stage-1 artefact is
  needed; the intent table folder may be deleted.

Threads: one ``ServedModel`` may serve many threads at once (a server's). The model keeps no per-call
state (``model/wrapper.py``: per thread), the intent table and online stage 1 are set up once under a
lock, online stage 1 itself runs one prefix at a time (its backend and encoder are not assumed
thread-safe) and keeps the last ``online_cache`` prefixes' intents (an LRU), so every answer is the
one a lone caller gets. Inputs are checked before any work, and an error quotes at most
``ECHO_CHARS`` characters of them.
"""
from __future__ import annotations

import argparse
import copy
import json
import numbers
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import recbole_llm4sbr  # noqa: F401  (compat shims before RecBole loads)
from recbole_llm4sbr.errors import LLM4SBRError, run_command


class ServeError(LLM4SBRError):
    """Bad input to serving (checkpoint, items, k, missing artefact): the message names the fix."""


#: the most characters of a caller's input an error message quotes
ECHO_CHARS = 100
#: online stage 1's intents kept per served model (the most recently used prefixes)
ONLINE_CACHE = 1024


def clip(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters (``...`` and the size when cut): what an error
    message may quote of a caller's input. Never builds the whole repr of a huge input."""
    if isinstance(value, (list, tuple)):
        parts, used = [], 2
        for item in value:
            part = clip(item, limit)
            if used + len(part) > limit and parts:
                parts.append("...")
                break
            parts.append(part)
            used += len(part) + 2
        text = "[" + ", ".join(parts) + "]"
        return text if len(value) == len(parts) else f"{text} ({len(value)} items)"
    if isinstance(value, (str, bytes, bytearray)):
        text = repr(value[:limit])
        return text if len(value) <= limit else text[:limit] + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def session_tokens(item_tokens: Any) -> List[str]:
    """The item tokens of one session: a sequence of tokens (strings; integers are written as
    strings), or one string of tokens separated by spaces or commas. ServeError for anything else
    (``bytes``, a number, a mapping, a token that is not a string, ...), quoting the input clipped."""
    if isinstance(item_tokens, str):
        return item_tokens.replace(",", " ").split()
    if isinstance(item_tokens, (bytes, bytearray, memoryview)):
        raise ServeError(f"items must be text, got bytes {clip(bytes(item_tokens))}. Fix: decode them "
                         "(items.decode('utf-8')) or pass a list of item tokens.")
    if isinstance(item_tokens, (dict, set, frozenset)) or not isinstance(item_tokens, (list, tuple)) and (
            not hasattr(item_tokens, "__iter__") or not hasattr(item_tokens, "__len__")):
        raise ServeError(f"items must be a list of item tokens (oldest first), got {type(item_tokens).__name__} "
                         f"{clip(item_tokens)}. Fix: pass e.g. [\"50\", \"172\"] or \"50 172\".")
    tokens = []
    for i, tok in enumerate(item_tokens):
        if isinstance(tok, str):
            tokens.append(tok.strip())
        elif isinstance(tok, numbers.Integral) and not isinstance(tok, bool):
            tokens.append(str(int(tok)))
        else:
            raise ServeError(f"item token {i} is {type(tok).__name__} {clip(tok)}, not a string. Fix: give the "
                             "dataset's item tokens as strings (e.g. [\"50\", \"172\"]).")
    return tokens


def positive_k(k: Any) -> int:
    """``k`` as an int: an integer (not a bool, not 1.7), or a string of one (the CLI's)."""
    if isinstance(k, numbers.Integral) and not isinstance(k, bool):
        value = int(k)
    elif isinstance(k, str) and k.strip().lstrip("+-").isdigit() and len(k.strip()) <= 18:
        value = int(k.strip())
    else:
        raise ServeError(f"k must be a positive integer, got {type(k).__name__} {clip(k)}. Fix: pass a whole "
                         "number of items, e.g. k=10.")
    if value < 1:
        raise ServeError(f"k must be at least 1, got {value}. Fix: pass a whole number of items, e.g. k=10.")
    return value


@dataclass
class Recommendation:
    items: List[str]  # top-k item tokens, best first
    scores: List[float]  # their scores (the model's logits), descending
    session: List[str]  # the item tokens the model saw (the last MAX_ITEM_LIST_LENGTH)
    model: str
    semantic_at_inference: bool
    intents: Optional[Dict[str, Dict[str, Any]]] = None  # view -> {answer, items, sims}
    intent_source: Optional[str] = None  # "table" | "online" | None (LLM-free)
    prefix_key: Optional[str] = None
    titles: Optional[List[Optional[str]]] = None  # the items' texts from <ds>.itemtext (None: no such file)

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, "semantic_at_inference": self.semantic_at_inference,
                "session": self.session, "prefix_key": self.prefix_key,
                "items": self.items, "scores": self.scores, "titles": self.titles,
                "intents": self.intents, "intent_source": self.intent_source}

    def ranked(self) -> List[Dict[str, Any]]:
        """``[{"item", "title", "score"}]``, best first (the HTTP server's ``items``)."""
        titles = self.titles or [None] * len(self.items)
        return [{"item": t, "title": title, "score": s} for t, title, s in zip(self.items, titles, self.scores)]


class ServedModel:
    """A checkpoint loaded for serving: config, dataset (item vocabulary), model in eval mode."""

    def __init__(self, checkpoint: Union[str, Path], data_path: Optional[str] = None,
                 online: bool = True, device: str = "cpu", online_cache: int = ONLINE_CACHE):
        import torch

        from recbole_llm4sbr.data.dataset import LLM4SBRDataset
        from recbole_llm4sbr.utils import get_model

        path = Path(checkpoint)
        if not path.is_file():
            raise ServeError(
                f"checkpoint {path} not found. Fix: pass the .pth that training saved (run_recbole_llm4sbr "
                "writes it to checkpoint_dir, default ./saved/, and returns it as result['model_file']).")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # not a torch file, truncated, ...
            raise ServeError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}). Fix: pass a "
                             "RecBole .pth saved by the trainer.") from None
        if not isinstance(state, dict) or "config" not in state or "state_dict" not in state:
            raise ServeError(f"checkpoint {path} is not a RecBole checkpoint (no config/state_dict inside). "
                             "Fix: pass a .pth saved by the trainer.")
        config = state["config"]
        self.path = path
        self.model_name = str(config["model"])
        from recbole_llm4sbr.model.bases import is_wrapped  # RecBole and torch: not for --help

        llm4sbr = is_wrapped(self.model_name)
        from recbole_llm4sbr.model.wrapper import as_flag

        self.semantic = llm4sbr and as_flag(config["semantic_at_inference"], default=True)
        if data_path is not None:  # RecBole's data_path ends in the dataset's folder
            config["data_path"] = os.path.join(str(data_path), str(config["dataset"]))
        config["device"] = torch.device(device)
        config["gpu_id"] = "" if device == "cpu" else config["gpu_id"]
        config["load_intent"] = bool(self.semantic)
        weights = state["state_dict"]
        if llm4sbr and not self.semantic and "projection.weight" in weights:
            config["intent_d_text"] = int(weights["projection.weight"].shape[1])
        if config["torch_num_threads"]:
            torch.set_num_threads(int(config["torch_num_threads"]))
        self.config = config
        if self.semantic:
            self._check_intent_table()
        try:
            self.dataset = LLM4SBRDataset(config)
        except FileNotFoundError as err:
            raise ServeError(f"{err}. Fix: pass --data_path=<folder holding {config['dataset']}/>.") from None
        model = get_model(self.model_name)(config, self.dataset)
        model.load_state_dict(weights)
        model.load_other_parameter(state.get("other_parameter"))
        self.model = model.to(config["device"]).eval()
        self.item_field = self.dataset.iid_field
        self.seq_field = self.item_field + config["LIST_SUFFIX"]
        self.len_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.max_len = int(config["MAX_ITEM_LIST_LENGTH"] or 50)
        self.width = int(self.dataset.field2seqlen[self.seq_field])
        self.key_field = config["PREFIX_KEY_FIELD"] or "prefix_key"
        self.online_enabled = online
        self.online_cache = int(online_cache)
        self._online = None
        self._table = None
        self._lock = threading.Lock()  # the lazy table() / online() set-up, once across threads
        self.titles = self._read_titles()

    def _read_titles(self) -> Dict[str, str]:
        """``{item token: text}`` of ``<ds>.itemtext`` (the answer's titles); empty when the dataset has
        none (a stock RecBole dataset)."""
        from recbole_llm4sbr.intent.inputs import itemtext_path, read_item_text

        settings = self._stage1_settings()
        return read_item_text(settings) if itemtext_path(settings).is_file() else {}

    # -- intents ---------------------------------------------------------------------------------
    def _stage1_settings(self):
        from recbole_llm4sbr.data.intents import stage1_settings

        return stage1_settings(self.config)

    def _check_intent_table(self):
        from recbole_llm4sbr.intent.pipeline import locate_table
        from recbole_llm4sbr.intent.settings import normalize_settings

        settings = normalize_settings(self._stage1_settings())
        folder, _, reason = locate_table(settings)
        if reason is not None:
            raise ServeError(
                f"{self.path.name} serves with intents (semantic_at_inference: True), but its intent table "
                f"{folder} is {reason}. Fix: build it with `python -m recbole_llm4sbr.intent "
                f"--dataset={settings['dataset']} --data_path={settings['data_path']}` (the settings used in "
                "training), or serve a checkpoint trained with --semantic_at_inference=False (LLM-free).")

    def table(self):
        if self._table is None:
            with self._lock:
                if self._table is None:
                    from recbole_llm4sbr.intent import load_intent_table

                    table = load_intent_table(self.dataset.intent_table_path, mmap=True)
                    "" in table  # noqa: B015  (its key index and answers' offsets, built once here)
                    table.answer_offsets()
                    self._table = table
        return self._table

    def table_record(self, key: str) -> Optional[Dict[str, Any]]:
        """The ``answers.jsonl`` record of ``key`` (``IntentTable.record``: one seek via the table's
        own index), None when the table does not hold it."""
        table = self.table()
        return table.record(key) if key in table else None

    def online(self):
        if self._online is None:
            with self._lock:
                if self._online is None:
                    from recbole_llm4sbr.intent.online import OnlineIntents

                    self._online = OnlineIntents(self._stage1_settings(), self.dataset.intent_table_path,
                                                 cache_size=self.online_cache)
        return self._online

    def _view_slice(self, intent_views: Sequence[str]) -> List[int]:
        return [list(intent_views).index(v) for v in self.model.views]

    # -- one session -----------------------------------------------------------------------------
    def session_ids(self, item_tokens: Sequence[str]) -> Tuple[List[str], List[int]]:
        tokens = session_tokens(item_tokens)
        if not tokens:
            raise ServeError("the session is empty. Fix: give at least one item token (e.g. --items=\"50 172\", "
                             "or [\"50\", \"172\"]).")
        vocab = self.dataset.field2token_id[self.item_field]
        unknown = [t for t in tokens if t not in vocab or vocab[t] == 0]
        if unknown:
            example = ", ".join(list(self.dataset.field2id_token[self.item_field][1:4]))
            raise ServeError(
                f"unknown item tokens {clip(unknown)}: not in the catalogue of {self.config['dataset']} "
                f"({self.dataset.item_num - 1} items, e.g. {example}). Fix: give the dataset's own item tokens.")
        tokens = tokens[-self.max_len:]  # as the converters write prefixes: the LAST max_len items
        return tokens, [vocab[t] for t in tokens]

    def interaction(self, ids: Sequence[int], key_id: Optional[int]):
        import torch
        from recbole.data.interaction import Interaction

        width = max(self.width, len(ids))
        seq = torch.zeros((1, width), dtype=torch.long)
        seq[0, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        data = {self.seq_field: seq, self.len_field: torch.tensor([len(ids)], dtype=torch.long)}
        uid = getattr(self.model, "USER_ID", None)
        if uid:
            data[uid] = torch.zeros(1, dtype=torch.long)  # a new session: the padding user
        if key_id is not None:
            data[self.key_field] = torch.tensor([key_id], dtype=torch.long)
        return Interaction(data).to(self.config["device"])

    def recommend(self, item_tokens: Union[Sequence[str], str], k: int = 10) -> Recommendation:
        """Top-``k`` for one session (item tokens oldest first, or one string of them); safe to call
        from many threads at once."""
        import torch

        from recbole_llm4sbr.intent.keys import prefix_key

        k = positive_k(k)
        n_items = self.dataset.item_num - 1
        if k > n_items:
            raise ServeError(f"k={k} exceeds the catalogue of {self.config['dataset']} ({n_items} items). "
                             f"Fix: pass k <= {n_items}.")
        tokens, ids = self.session_ids(item_tokens)
        intents = source = key = None
        with torch.no_grad():
            if not self.semantic:
                scores = self.model.full_sort_predict(self.interaction(ids, None))
            else:
                key = prefix_key(tokens)
                key_id = self.dataset.field2token_id[self.key_field].get(key)
                if key_id is not None:  # a prefix of the dataset: its table row
                    scores = self.model.full_sort_predict(self.interaction(ids, key_id))
                    record = self.table_record(key)
                    intents, source = (record or {}).get("views"), "table"
                else:
                    if not self.online_enabled:
                        raise ServeError(
                            f"the session {clip(tokens)} is not in the intent table and online stage 1 is off. Fix: "
                            "allow it (recommend(..., online=True); CLI without --no_online), or serve a "
                            "checkpoint trained with --semantic_at_inference=False (LLM-free).")
                    found = self.online().infer(tokens)
                    localized = self.config["intent_localization"]
                    array = found.vectors if localized is None or localized else found.raw
                    vectors = torch.from_numpy(array[self._view_slice(found.views)]).unsqueeze(0)
                    scores = self.model.full_sort_predict_with_intents(self.interaction(ids, None), vectors)
                    intents, source = found.record["views"], "online"
            if scores.dim() == 1:  # bases whose full_sort_predict returns [n_items] for one row
                scores = scores.view(1, -1)
            scores = scores[0].float().clone()
            scores[0] = float("-inf")  # padding is never recommended
            top = torch.topk(scores, k)
        items = list(self.dataset.id2token(self.item_field, top.indices.cpu().numpy()))
        if intents is not None:
            # copies: the caller may edit its answer, the online cache's entry stays as inferred
            intents = {v: copy.deepcopy(intents[v]) for v in self.model.views if v in intents}
        items = [str(t) for t in items]
        titles = [self.titles.get(t) for t in items] if self.titles else None
        return Recommendation(items, [float(s) for s in top.values.cpu()], tokens,
                              self.model_name, bool(self.semantic), intents, source, key, titles)


_LOADED: Dict[Tuple, ServedModel] = {}
_LOADING = threading.Lock()  # one load per key, even when many threads ask at once


def load(checkpoint: Union[str, Path], data_path: Optional[str] = None, online: bool = True,
         online_cache: int = ONLINE_CACHE) -> ServedModel:
    """The checkpoint loaded for serving, once per process (keyed by path, mtime, data_path, online)."""
    path = Path(checkpoint)
    if not path.is_file():
        return ServedModel(path, data_path, online)  # raises the clear error
    key = (str(path.resolve()), path.stat().st_mtime_ns, data_path, online, int(online_cache))
    with _LOADING:
        if key not in _LOADED:
            _LOADED[key] = ServedModel(path, data_path, online, online_cache=online_cache)
        return _LOADED[key]


def recommend(checkpoint: Union[str, Path], item_tokens: Sequence[str], k: int = 10,
              data_path: Optional[str] = None, online: bool = True) -> Recommendation:
    """Top-``k`` next items (tokens, scores, titles, and the intents where the model uses them) for
    the session ``item_tokens`` (oldest first; a list, or one string separated by spaces or commas)
    under ``checkpoint``. Thread-safe."""
    tokens = session_tokens(item_tokens)
    positive_k(k)  # before the checkpoint loads
    return load(checkpoint, data_path, online).recommend(tokens, k)


def clear_cache() -> None:
    with _LOADING:
        for served in _LOADED.values():
            if served._online is not None:
                served._online.close()
        _LOADED.clear()


# -- CLI ---------------------------------------------------------------------------------------------
def format_text(rec: Recommendation) -> str:
    lines = [f"{rec.model} (semantic_at_inference: {rec.semantic_at_inference}), session {' '.join(rec.session)}"]
    if rec.intents:
        lines.append(f"intents ({rec.intent_source}):")
        for view, entry in rec.intents.items():
            grounded = ", ".join(entry.get("items", []))
            lines.append(f"  {view}: {entry.get('answer')!r} -> grounded items [{grounded}]")
    lines.append("rank\titem\tscore\ttitle")
    lines += [f"{i}\t{r['item']}\t{r['score']:.4f}\t{r['title'] or ''}" for i, r in enumerate(rec.ranked(), start=1)]
    return "\n".join(lines)


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_llm4sbr.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a .pth saved by training")
    parser.add_argument("--items", required=True, action="append",
                        help="one session: item tokens, oldest first, space or comma separated (repeat for more)")
    parser.add_argument("--k", default="10", help="how many items (default 10)")
    parser.add_argument("--data_path", default=None, help="folder holding the dataset (default: the checkpoint's)")
    parser.add_argument("--no_online", action="store_true",
                        help="never run stage 1 for a new session (semantic models fail on new sessions)")
    parser.add_argument("--json", action="store_true", help="one JSON object per session")
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    for session in args.items:
        rec = recommend(args.checkpoint, session, args.k, data_path=args.data_path, online=not args.no_online)
        print(json.dumps(rec.to_dict(), ensure_ascii=False) if args.json else format_text(rec), flush=True)
    return 0


#: the exit code of a command whose reader went away (``| head``): the shell's for a SIGPIPE death
CLOSED_PIPE = 141


def quiet_on_closed_pipe(command):
    """Run ``command()``; when stdout's reader has gone (``BrokenPipeError``), point stdout at
    /dev/null (so the interpreter's exit flush cannot fail again) and return ``CLOSED_PIPE``, quietly."""
    try:
        return command()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (a test's capture): nothing to flush
            pass
        return CLOSED_PIPE


def main(argv=None) -> int:
    """The serving command line; a user error is one stderr line and exit code 2 (``errors.run_command``);
    a closed stdout (``... | head``) ends it quietly with ``CLOSED_PIPE``."""
    return quiet_on_closed_pipe(lambda: run_command(_main, argv))

if __name__ == "__main__":
    sys.exit(main())
