"""OpenAI CLIP's byte-level BPE tokenizer, reproducing its token ids exactly.

The merges file is OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT licence, see
`assets/LICENSE-openai-clip.txt`), shipped as package data so no download is needed.
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import ftfy
import numpy as np
import regex

from launcher.errors import UserError

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
VOCAB_SIZE = 49408
DEFAULT_CONTEXT_LENGTH = 77

# Number of merges OpenAI keeps from the file: vocab = 256 bytes * 2 (+"</w>") + merges + 2 specials.
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2

# OpenAI's pre-tokenisation pattern: special tokens, English contractions, letter runs,
# single digits, and runs of anything else that is not whitespace.
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


@functools.lru_cache(maxsize=None)
def byte_to_unicode() -> Dict[int, str]:
    """Map each byte to a printable unicode character, so BPE works on strings without whitespace
    or control characters (GPT-2/CLIP convention: printable Latin-1 bytes map to themselves, the
    rest to code points from 256 upward). Insertion order matters: it is the id order of the
    first 256 vocabulary entries (printable bytes first, then the others)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + k) for k, b in enumerate(others)})
    return table


def basic_clean(text: str) -> str:
    """ftfy and html unescaped twice: where every open_clip cleaner starts (SigLIP's too, clip.model.hf_tokenizer)."""
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def clean_text(text: str) -> str:
    """The text normalisation OpenAI applies before BPE: the basic clean, whitespace collapse, lower case."""
    return _WHITESPACE.sub(" ", basic_clean(text)).strip().lower()


def _load_merges() -> List[Tuple[str, str]]:
    data = importlib.resources.files("clip").joinpath("assets/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    # Line 0 is a version header; OpenAI uses exactly the next _NUM_MERGES lines.
    return [tuple(line.split()) for line in lines[1:1 + _NUM_MERGES]]


def build_vocab(merges: Sequence[Tuple[str, str]]) -> Dict[str, int]:
    """Token string -> id in OpenAI's order: bytes, bytes + end-of-word, merges, specials."""
    symbols = list(byte_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    tokens += [SOT_TOKEN, EOT_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}


def bpe_merge(word: str, ranks: Dict[Tuple[str, str], int]) -> List[str]:
    """Greedy BPE on one pre-token: repeatedly merge the adjacent pair with the lowest rank
    (all its non-overlapping occurrences, left to right) until no pair is in the table."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged: List[str] = []
        i = 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


class Tokenizer:
    """Text -> OpenAI CLIP token ids. Merged words are cached, since captions repeat words a lot."""

    def __init__(self, merges: Sequence[Tuple[str, str]]):
        self.vocab = build_vocab(merges)
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_table = byte_to_unicode()
        self._cache: Dict[str, List[int]] = {SOT_TOKEN: [SOT_ID], EOT_TOKEN: [EOT_ID]}

    def _word_ids(self, word: str) -> List[int]:
        ids = self._cache.get(word)
        if ids is None:
            mapped = "".join(self.byte_table[b] for b in word.encode("utf-8"))
            ids = [self.vocab[p] for p in bpe_merge(mapped, self.ranks)]
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` without start/end tokens."""
        ids: List[int] = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Inverse of `encode` up to the text cleaning; specials decode to their names.
        Strip padding first: pad id 0 is also the token "!"."""
        inverse = {i: tok for tok, i in self.vocab.items()}
        byte_of = {ch: b for b, ch in self.byte_table.items()}
        text = "".join(inverse[int(i)] for i in ids)
        return bytes(byte_of[ch] for ch in text).decode("utf-8", errors="replace").replace("</w>", " ")


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    return Tokenizer(_load_merges())


def pack_ids(token_lists: Sequence[Sequence[int]], context_length: int) -> np.ndarray:
    """Wrap each list in start/end tokens, truncate keeping the end token last, pad with 0."""
    out = np.full((len(token_lists), context_length), PAD_ID, dtype=np.int32)
    for row, ids in enumerate(token_lists):
        seq = [SOT_ID, *ids, EOT_ID]
        if len(seq) > context_length:
            seq = seq[:context_length]
            seq[-1] = EOT_ID
        out[row, :len(seq)] = seq
    return out


def tokenize(texts: Union[str, Sequence[str]], context_length: int = DEFAULT_CONTEXT_LENGTH) -> np.ndarray:
    """OpenAI CLIP token ids, int32 of shape [N, context_length] (N=1 for a single string)."""
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)) \
            or context_length < 2:
        raise UserError(f"tokenize: context_length={context_length!r}, expected an integer >= 2 "
                        "(room for the start and end tokens)")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UserError(f"tokenize: text #{i} is {type(text).__name__}, expected str")
    tok = default_tokenizer()
    return pack_ids([tok.encode(t) for t in texts], int(context_length))
