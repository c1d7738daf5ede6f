"""``intent_decoding: titles``: answers decoded under a token-trie constraint over the catalogue's titles.

SmolLM2-135M's free answers are mostly echoes, "not specified" or half titles (``python -m
recbole_llm4sbr.intent show``). With ``titles`` the LLM may only emit titles that exist in the catalogue
(``<ds>.itemtext``, the text before `` -- ``, e.g. ``Toy Story (1995)``), joined by ``"; "``: at every
step only tokens that continue some title are allowed; after a complete title also the separator or
a stop token (EOS); after ``intent_decoding_titles`` titles only a stop token. So every answer is a
``"; "``-joined list of 1..N real titles, which the pipeline then embeds and grounds as usual.

Tokens: the first title is tokenized on its own (a chat template's assistant turn begins fresh after
``assistant\\n``, so with a byte-level BPE the first word has no leading space; without a chat template
the answer continues the prompt, so it gets one); every later title as ``"; " + title`` in one piece,
exactly the tokens that text has. Both become one trie (``TitleTrie``): node 0 is the first title's
root, node 1 the later titles' root; a complete first-title node continues into node 1's children. A
token that would both continue the current title and start the separator continues the title.

Length: a token is allowed only when some title can still be completed within ``intent_max_tokens``
(each node knows its fewest tokens to a title's end); where none fits, the unfiltered tokens are
allowed and ``complete`` cuts the answer back to its last complete title (also what a sampled or a
cut-off answer gets). ``TitleConstraint`` holds the per-row state of one decode: ``mask`` is one
boolean [rows, vocab] tensor per step (``index_put`` of each row's cached allowed-token tensor),
``advance`` a dict look-up per row; the transformers backend applies it in ``generate`` (as a
``LogitsProcessor``, ``TitlesProcessor``) and in its own prefix-shared greedy loop alike.

Measured on ml-100k-session (typical 64, SmolLM2-135M, bf16, shared 2-core machine): every one of
the 128 answers was a valid title list, and every one was the same title, ``Theodore Rex (1995)``:
greedy decoding commits to the model's favourite first token, ``The`` (its free answers open with
"The item is ..."), and MovieLens writes articles last ("Usual Suspects, The (1995)"), so only a few
titles start with ``The``. Tried by hand, not built: titles with the article moved to the front
collapse onto "The 39 Steps (1935)"; 4 constrained beams onto "12 Angry Men (1957)" (and 7x slower);
the model's own preamble 'The item is a movie called "' before the title still onto Theodore Rex.

Only the transformers backend can constrain its decoding (it registers ``constrained_decoding``); vLLM's guided
decoding would need a regex over every title (not built), the OpenAI API offers no such constraint.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..validation import choose, refuse
from .errors import IntentError
from .settings import normalize_settings

#: what ``intent_decoding`` may say
DECODINGS = ("free", "titles")
#: between two titles of one answer
SEPARATOR = "; "
#: where an item text's title ends (the converters write ``<title> -- <genres>``)
TITLE_END = " -- "
#: default of ``intent_decoding_titles``
DEFAULT_MAX_TITLES = 3
#: bump when the constraint changes what an answer can be (it is in describe() and the table identity)
VERSION = 1


def decoding(settings: Mapping[str, Any]) -> str:
    """``intent_decoding`` (``free`` when unset)."""
    return choose(settings, "intent_decoding", DECODINGS, "free")


def max_titles(settings: Mapping[str, Any]) -> int:
    """``intent_decoding_titles``: at most this many titles per answer (>= 1)."""
    value = settings.get("intent_decoding_titles")
    if value is None:
        return DEFAULT_MAX_TITLES
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise refuse("intent_decoding_titles", value, "a positive count of titles per answer", str(DEFAULT_MAX_TITLES))
    return n


def identity(settings: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """What the table identity records of the decoding: None for ``free`` (today's tags unchanged)."""
    if decoding(settings) == "free":
        return None
    return {"mode": "titles", "max_titles": max_titles(settings), "separator": SEPARATOR, "version": VERSION}


def check_backend(settings: Mapping[str, Any], backend: str) -> None:
    """``titles`` needs a backend that can mask its logits, and generated text to constrain."""
    if decoding(settings) == "free":
        return
    from .registry import constrained_backends  # the backends that registered constrained decoding

    if backend not in constrained_backends():
        raise IntentError(
            f"intent_decoding=titles constrains the LLM's tokens to catalogue titles, which the {backend!r} "
            f"backend cannot do. Fix: --intent_backend=transformers (a local model) or --intent_decoding=free")
    rep = normalize_settings(settings).representation
    if rep != "text":
        raise IntentError(
            f"intent_decoding=titles constrains generated answers, but intent_representation={rep} generates "
            f"none. Fix: --intent_decoding=free or --intent_representation=text")


def title_of(text: str) -> str:
    """The title part of an item text: before `` -- `` (the whole text when there is none)."""
    return text.split(TITLE_END, 1)[0].strip()


def catalogue_titles(item_texts: Iterable[str]) -> List[str]:
    """The distinct titles of the catalogue's item texts (``<ds>.itemtext``, read by the caller), in order."""
    seen: Dict[str, None] = {}
    for text in item_texts:
        title = title_of(text)
        if title:
            seen.setdefault(title, None)
    if not seen:
        raise IntentError("intent_decoding=titles: the catalogue's item texts (<ds>.itemtext) hold no titles. "
                          "Fix: write '<title> -- <genres>' item texts or --intent_decoding=free")
    return list(seen)


def describe(settings: Mapping[str, Any], titles: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The backend's ``describe()`` entry (answer-cache key): the identity plus which titles."""
    ident = identity(settings)
    if ident is None:
        return None
    titles = list(titles)
    digest = hashlib.sha1("\n".join(titles).encode("utf-8")).hexdigest()
    return dict(ident, titles=len(titles), titles_sha1=digest)


class TitleTrie:
    """The token trie of the titles (module docstring). ``children[n]``: token -> node; ``terminal[n]``:
    a title ends here; ``dist[n]``: fewest tokens from ``n`` to a title's end (0 at a terminal)."""

    FIRST, NEXT = 0, 1

    def __init__(self, first: Sequence[Sequence[int]], later: Sequence[Sequence[int]], stop_ids: Sequence[int]):
        self.children: List[Dict[int, int]] = [{}, {}]
        self.terminal: List[bool] = [False, False]
        for root, seqs in ((self.FIRST, first), (self.NEXT, later)):
            for seq in seqs:
                if not seq:
                    continue
                node = root
                for t in seq:
                    nxt = self.children[node].get(int(t))
                    if nxt is None:
                        nxt = len(self.children)
                        self.children[node][int(t)] = nxt
                        self.children.append({})
                        self.terminal.append(False)
                    node = nxt
                self.terminal[node] = True
        inf = 1 << 30
        self.dist: List[int] = [inf] * len(self.children)
        for n in range(len(self.children) - 1, -1, -1):  # children come after their parents
            if self.terminal[n]:
                self.dist[n] = 0
            elif self.children[n]:
                self.dist[n] = 1 + min(self.dist[c] for c in self.children[n].values())
        self.stop_ids = [int(t) for t in stop_ids]
        self._stops = set(self.stop_ids)

    @classmethod
    def from_tokenizer(cls, tokenizer, titles: Sequence[str], stop_ids: Sequence[int], fresh_start: bool) -> "TitleTrie":
        """Titles tokenized as they appear in an answer: the first one fresh (``fresh_start``: a chat
        template's assistant turn) or after a space, every later one as ``"; " + title``."""
        lead = "" if fresh_start else " "
        first = tokenizer([lead + t for t in titles], add_special_tokens=False)["input_ids"]
        later = tokenizer([SEPARATOR + t for t in titles], add_special_tokens=False)["input_ids"]
        return cls(first, later, stop_ids)

    def step(self, node: int, more: bool, token: int) -> Optional[int]:
        """The node after ``token`` at ``node`` (``more``: another title may start), None if not allowed."""
        nxt = self.children[node].get(token)
        if nxt is None and more and self.terminal[node]:
            nxt = self.children[self.NEXT].get(token)
        return nxt

    def complete(self, tokens: Sequence[int], limit: int) -> List[int]:
        """``tokens`` (a generated answer) cut back to its last complete title (at most ``limit``
        titles; the stop token and anything after it dropped); [] when no title is complete."""
        node, count, keep = self.FIRST, 1, 0
        for i, t in enumerate(tokens):
            t = int(t)
            nxt = self.children[node].get(t)
            if nxt is None and count < limit and self.terminal[node] and t in self.children[self.NEXT]:
                nxt, count = self.children[self.NEXT][t], count + 1
            if nxt is None:
                break
            node = nxt
            if self.terminal[node]:
                keep = i + 1
        return list(tokens[:keep])


class TitleConstraint:
    """The per-row state of one constrained decode: (node, titles started), a done flag per row."""

    def __init__(self, trie: TitleTrie, limit: int, rows: int, max_new_tokens: int, cache: Dict[Tuple[int, bool], Any]):
        self.trie, self.limit, self.max_new = trie, limit, max_new_tokens
        self.node = [TitleTrie.FIRST] * rows
        self.count = [1] * rows
        self.done = [False] * rows
        self.steps = 0
        self._cache = cache  # (node, another title may start) -> (tokens, dist) tensors, per backend

    def _allowed(self, node: int, more: bool):
        key = (node, more)
        hit = self._cache.get(key)
        if hit is None:
            import torch

            trie = self.trie
            own = trie.children[node]
            pairs = [(t, trie.dist[c]) for t, c in own.items()]
            if trie.terminal[node]:
                if more:
                    pairs += [(t, trie.dist[c]) for t, c in trie.children[trie.NEXT].items() if t not in own]
                pairs += [(t, 0) for t in trie.stop_ids if t not in own]
            hit = (torch.tensor([p[0] for p in pairs], dtype=torch.long),
                   torch.tensor([p[1] for p in pairs], dtype=torch.long))
            self._cache[key] = hit
        return hit

    def mask(self, vocab: int, device) -> Any:
        """[rows, vocab] bool: the tokens each open row may take now (finished rows: all)."""
        import torch

        left = self.max_new - self.steps  # tokens left, this one included
        rows, cols = [], []
        for r, (node, count, done) in enumerate(zip(self.node, self.count, self.done)):
            if done:
                continue
            tokens, dist = self._allowed(node, count < self.limit and self.trie.terminal[node])
            fits = tokens[dist <= left - 1]
            fits = fits if fits.numel() else tokens  # nothing fits: cut back by complete() afterwards
            rows.append(torch.full_like(fits, r))
            cols.append(fits)
        mask = torch.zeros((len(self.node), vocab), dtype=torch.bool)
        for r, done in enumerate(self.done):
            if done:
                mask[r] = True
        if rows:
            mask[torch.cat(rows), torch.cat(cols)] = True
        return mask.to(device)

    def apply(self, scores):
        """``scores`` [rows, vocab] with every token this step does not allow at -inf."""
        allowed = self.mask(scores.shape[-1], scores.device)
        return scores.masked_fill(~allowed, float("-inf"))

    def advance(self, tokens: Sequence[int]) -> None:
        """Each row took ``tokens[r]`` (ignored for finished rows)."""
        trie = self.trie
        for r, t in enumerate(tokens):
            if self.done[r]:
                continue
            t = int(t)
            node, count = self.node[r], self.count[r]
            nxt = trie.children[node].get(t)
            if nxt is None and count < self.limit and trie.terminal[node]:
                nxt = trie.children[trie.NEXT].get(t)
                if nxt is not None:
                    count += 1
            if nxt is None:  # a stop token (or an outside token: the row is over either way)
                self.done[r] = True
            else:
                self.node[r], self.count[r] = nxt, count
        self.steps += 1

    def keep_rows(self, keep: Sequence[int]) -> None:
        """Only rows ``keep`` go on (the shared greedy loop drops finished rows)."""
        self.node = [self.node[j] for j in keep]
        self.count = [self.count[j] for j in keep]
        self.done = [self.done[j] for j in keep]


def titles_processor(constraint: TitleConstraint, prompt_width: int):
    """A transformers ``LogitsProcessor`` applying ``constraint`` inside ``model.generate``: it learns
    each step's token from the growing ``input_ids`` (the prompt is ``prompt_width`` wide)."""
    from transformers import LogitsProcessor

    class TitlesProcessor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            new = input_ids.shape[1] - prompt_width
            if new > constraint.steps:
                constraint.advance(input_ids[:, -1].tolist())
            return constraint.apply(scores)

    return TitlesProcessor()


__all__ = ["DECODINGS", "SEPARATOR", "decoding", "max_titles", "identity", "check_backend",
           "title_of", "catalogue_titles", "describe", "TitleTrie", "TitleConstraint", "titles_processor"]
