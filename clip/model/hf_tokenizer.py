"""SigLIP's and SigLIP2's tokenizers (T5 / mT5 SentencePiece, Gemma) built from the user's own vocabulary file, giving
the token ids open_clip's `HFTokenizer` gives for the model's `hf_tokenizer_name`.

open_clip fetches these vocabularies from the Hugging Face hub at run time; here nothing is downloaded, so the file
is an input like a checkpoint: a Hugging Face `tokenizer.json` (read by `tokenizers`) or a SentencePiece `.model`
(read by `sentencepiece`), or a directory holding one. Both packages are imported only when such a tokenizer is
built, so OpenAI-BPE models and the pure model modules never pay for them.

What open_clip does, and this module repeats:
- the text is cleaned first (`tokenizer_kwargs.clean`: SigLIP's "canonicalize" drops punctuation and lower-cases,
  after ftfy and a double html unescape);
- EOS ends every text, also a truncated one: the text is cut to context_length - 1 pieces and EOS is appended
  (Hugging Face truncation leaves room for the tokens its post-processor adds);
- every row is padded to exactly context_length, because SigLIP's text tower pools at the last position
  (open_clip #1076); T5 vocabularies pad with EOS (id 1), Gemma with `<pad>` (id 0), as open_clip's
  `SigLipTokenizer` set them when it wrote the hub's tokenizer files."""
from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import numpy as np

from clip.model.tokenizer import basic_clean
from launcher.errors import UserError, path, shown

# SentencePiece files as open_clip's SigLipTokenizer names them (the hub's tokenizer.json files were made from them)
BIG_VISION_VOCABULARIES = {
    "t5": "http://storage.googleapis.com/t5-data/vocabs/cc_en.32000/sentencepiece.model",
    "mt5": "http://storage.googleapis.com/t5-data/vocabs/mc4.250000.100extra/sentencepiece.model",
    "gemma": "http://storage.googleapis.com/big_vision/gemma_tokenizer.model",
}
CLEANERS = ("canonicalize", "lower", "whitespace")
DEFAULT_CLEAN = "whitespace"  # open_clip's HFTokenizer default when a config names none
# the names a directory is searched for, in this order (Hugging Face's, then T5's and Gemma's SentencePiece names)
DIRECTORY_FILES = ("tokenizer.json", "spiece.model", "tokenizer.model", "sentencepiece.model")


@dataclass(frozen=True)
class Family:
    """The special-token convention of one vocabulary family: which piece pads and which ends a text."""
    name: str
    pad_piece: str
    pad_id: int
    eos_piece: str
    eos_id: int


T5 = Family("T5 SentencePiece", pad_piece="</s>", pad_id=1, eos_piece="</s>", eos_id=1)
GEMMA = Family("Gemma", pad_piece="<pad>", pad_id=0, eos_piece="<eos>", eos_id=1)


def family_of(hf_tokenizer_name: str) -> Family:
    """SigLIP2's checkpoints (hub names "...SigLIP2...") use Gemma's vocabulary; SigLIP's use T5's or mT5's."""
    return GEMMA if "siglip2" in hf_tokenizer_name.lower() else T5


def where_to_get(hf_tokenizer_name: str) -> str:
    """Where a user finds the file open_clip would download for this model."""
    if family_of(hf_tokenizer_name) is GEMMA:
        big_vision = BIG_VISION_VOCABULARIES["gemma"]
    elif "i18n" in hf_tokenizer_name.lower():
        big_vision = BIG_VISION_VOCABULARIES["mt5"]
    else:
        big_vision = BIG_VISION_VOCABULARIES["t5"]
    return f"tokenizer.json from https://huggingface.co/{hf_tokenizer_name}, or the SentencePiece model {big_vision}"


def canonicalize(text: str) -> str:
    """big_vision's prompt canonicalisation as open_clip writes it: "_" is a space, ASCII punctuation goes,
    lower case, whitespace collapsed."""
    text = text.replace("_", " ").translate(_NO_PUNCTUATION).lower()
    return " ".join(text.split()).strip()


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def clean_function(name: Optional[str]) -> Callable[[str], str]:
    """open_clip's `get_clean_fn`: every cleaner starts with ftfy and a double html unescape."""
    name = DEFAULT_CLEAN if name is None else name
    if name == "canonicalize":
        return lambda text: canonicalize(basic_clean(text))
    if name == "lower":
        return lambda text: " ".join(basic_clean(text).split()).strip().lower()
    if name == "whitespace":
        return lambda text: " ".join(basic_clean(text).split()).strip()
    raise UserError(f"model tokenizer_clean {name!r} is not one of {', '.join(CLEANERS)}")


def find_file(path: str, hint: str) -> str:
    """The vocabulary file `path` names (itself, or the first of DIRECTORY_FILES inside a directory)."""
    if os.path.isdir(path):
        for name in DIRECTORY_FILES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise UserError(f"{shown(path)}: a directory holding none of {', '.join(DIRECTORY_FILES)} (get {hint})")
    if not os.path.exists(path):
        raise UserError(f"{shown(path)}: tokenizer file not found (get {hint})")
    if not os.path.isfile(path):
        raise UserError(f"{shown(path)}: not a regular file or a directory")
    return path


class _HuggingFaceVocabulary:
    """A tokenizer.json: its normaliser, pre-tokeniser, model and post-processor (which appends EOS) as written."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{shown(path)}: cannot read a tokenizer.json ({exc.__class__.__name__})") from None
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or "type" not in data["model"]:
            raise UserError(f"{shown(path)}: a JSON file but not a Hugging Face tokenizer.json (no model.type)")
        try:
            self._tokenizer = Tokenizer.from_str(text)
        except Exception as exc:  # the tokenizers package raises bare Exception subclasses on a damaged file
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{shown(path)}: not a Hugging Face tokenizer.json ({first})") from None
        self.size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def piece_id(self, piece: str) -> Optional[int]:
        return self._tokenizer.token_to_id(piece)

    def prepare(self, context_length: int, family: Family) -> None:
        from tokenizers import processors

        # open_clip's SigLipTokenizer wrote the hub files with EOS appended and no BOS (Gemma's own default puts
        # BOS first); set it here too, so a tokenizer.json saved another way gives the same rows
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"$A {family.eos_piece}", special_tokens=[(family.eos_piece, family.eos_id)])
        self._tokenizer.enable_truncation(max_length=context_length)
        self._tokenizer.enable_padding(length=context_length, pad_id=family.pad_id, pad_token=family.pad_piece)
        self._context_length = context_length

    def encode(self, texts: List[str]) -> np.ndarray:
        return np.asarray([e.ids for e in self._tokenizer.encode_batch(texts)], dtype=np.int32).reshape(
            len(texts), self._context_length)


class _SentencePieceVocabulary:
    """A SentencePiece model: pieces only; EOS and padding are added here as the Hugging Face tokenizer
    open_clip made from the same file adds them.

    The text first goes through the `tokenizers` package's normaliser built from the model's own character map
    (the one transformers' conversion puts in that tokenizer): it maps whole graphemes where SentencePiece maps
    characters, so a letter with a combining mark can come out differently ("ª" + U+0591: "a" there, "a" and an
    unknown piece here). SentencePiece's own normalisation of the result changes nothing more."""

    def __init__(self, path: str):
        import sentencepiece

        self._processor = sentencepiece.SentencePieceProcessor()
        self._normalizer = None
        try:
            with open(path, "rb") as file:
                data = file.read()
            self._processor.LoadFromSerializedProto(data)
        except OSError as exc:
            raise UserError(f"{shown(path)}: cannot read the tokenizer ({exc.__class__.__name__})") from None
        except Exception:  # sentencepiece raises RuntimeError naming its C++ source line on a damaged file
            raise UserError(f"{shown(path)}: neither a tokenizer.json nor a SentencePiece model "
                            f"(its bytes do not parse as one)") from None
        self.size = self._processor.GetPieceSize()
        from sentencepiece import sentencepiece_model_pb2
        from tokenizers import normalizers

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(data)
        if proto.normalizer_spec.precompiled_charsmap:  # Gemma's models normalise nothing
            self._normalizer = normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap)

    def piece_id(self, piece: str) -> Optional[int]:
        found = self._processor.PieceToId(piece)
        return found if self._processor.IdToPiece(found) == piece else None

    def prepare(self, context_length: int, family: Family) -> None:
        self._context_length, self._family = context_length, family

    def encode(self, texts: List[str]) -> np.ndarray:
        out = np.full((len(texts), self._context_length), self._family.pad_id, dtype=np.int32)
        if self._normalizer is not None:
            texts = [self._normalizer.normalize_str(text) for text in texts]
        for row, ids in enumerate(self._processor.Encode(texts)):
            ids = [*ids[:self._context_length - 1], self._family.eos_id]
            out[row, :len(ids)] = ids
        return out


class VocabularyTokenizer:
    """texts -> int32 [n, context_length], cleaned, EOS-terminated and padded as open_clip's HFTokenizer does.
    Pickled as its arguments (the data pipeline's worker processes reopen the file)."""

    def __init__(self, path: str, *, hf_tokenizer_name: str, context_length: int, vocab_size: int,
                 clean: Optional[str] = None):
        self._arguments = (path, dict(hf_tokenizer_name=hf_tokenizer_name, context_length=context_length,
                                      vocab_size=vocab_size, clean=clean))
        hint = where_to_get(hf_tokenizer_name)
        self.path = find_file(path, hint)
        self.family = family_of(hf_tokenizer_name)
        self.context_length = context_length
        self._clean = clean_function(clean)
        self._vocabulary = _open(self.path)
        for piece, expected in ((self.family.eos_piece, self.family.eos_id),
                                (self.family.pad_piece, self.family.pad_id)):
            found = self._vocabulary.piece_id(piece)
            if found != expected:
                raise UserError(f"{shown(self.path)}: {piece!r} is {'missing' if found is None else f'id {found}'}, "
                                f"expected id {expected} as in the {self.family.name} vocabulary of "
                                f"{hf_tokenizer_name} (get {hint})")
        if self._vocabulary.size > vocab_size:
            raise UserError(f"{shown(self.path)}: {self._vocabulary.size} tokens do not fit the model's vocab_size "
                            f"{vocab_size} (the model {hf_tokenizer_name} needs {hint})")
        self._vocabulary.prepare(context_length, self.family)

    def __reduce__(self):
        path, options = self._arguments
        return (_rebuild, (path, options))

    def __call__(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UserError(f"tokenize: text #{i} is {type(text).__name__}, expected str")
        return self._vocabulary.encode([self._clean(t) for t in texts])


def _rebuild(path: str, options: dict) -> "VocabularyTokenizer":
    return VocabularyTokenizer(path, **options)


def _open(path: str):
    """Format by content: a JSON object is a tokenizer.json, anything else is tried as a SentencePiece model."""
    with open(path, "rb") as file:
        head = file.read(64).lstrip()
    if head.startswith(b"{"):
        return _HuggingFaceVocabulary(path)
    return _SentencePieceVocabulary(path)


def for_model(config, path: Optional[str], what: str = "model.tokenizer") -> Callable[[Sequence[str]], np.ndarray]:
    """The tokenizer of `config` (a CLIPConfig): OpenAI's built-in BPE when it names no hf_tokenizer_name, else
    the vocabulary at `path`; `what` (the config key or option the path came from) starts every error."""
    if config.hf_tokenizer_name is None:
        if path is not None:
            raise UserError(f"{what}: {shown(path)} is for models with a SentencePiece / Hugging Face vocabulary "
                            f"(SigLIP); this model uses OpenAI's built-in BPE, give no tokenizer")
        if config.tokenizer_clean not in (None, "lower"):
            raise UserError(f"model tokenizer_clean {config.tokenizer_clean!r}: OpenAI's BPE cleans only one "
                            f"way (lower)")
        return OpenAIBPE(config.context_length)
    if path is None:
        raise UserError(f"{what}: the model's text tower uses the {family_of(config.hf_tokenizer_name).name} "
                        f"vocabulary of {config.hf_tokenizer_name}; give its file with {what} "
                        f"(get {where_to_get(config.hf_tokenizer_name)})")
    try:
        return VocabularyTokenizer(path, hf_tokenizer_name=config.hf_tokenizer_name,
                                   context_length=config.context_length, vocab_size=config.vocab_size,
                                   clean=config.tokenizer_clean)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class OpenAIBPE:
    """OpenAI's tokenizer at a model's context length, picklable like VocabularyTokenizer."""
    context_length: int

    def __call__(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        from clip.model.tokenizer import tokenize

        return tokenize(texts, self.context_length)


def attach(model, path: Optional[str], what: str = "model.tokenizer") -> Callable[[Sequence[str]], np.ndarray]:
    """Give a built model its tokenizer as `model.tokenize`, which evaluation and prediction call
    (clip.eval.encode), so the file is named once where the model is made; returns it."""
    model.tokenize = for_model(model.config, path, what)
    return model.tokenize


def tokenizer_of(model) -> Callable[[Sequence[str]], np.ndarray]:
    """The tokenizer attach() gave `model`, else its architecture's that needs no file (OpenAI's BPE; a SigLIP
    model is then refused naming model.tokenizer and where to get the file)."""
    return getattr(model, "tokenize", None) or for_model(model.config, None)


def add_argument(parser) -> None:
    """The `--tokenizer` option of the evaluation, benchmark and predict commands, said once."""
    parser.add_argument("--tokenizer", type=path("input"), metavar="PATH",
                        help="a SigLIP model's vocabulary: tokenizer.json or SentencePiece .model, or a directory "
                             "with one (= model.tokenizer; docs/models.md, Tokenizers); OpenAI models need none")


def override(tokenizer: Optional[str]) -> List[str]:
    """`--tokenizer PATH` as the config override it stands for, the path quoted so that any text survives YAML."""
    return [f"model.tokenizer={json.dumps(tokenizer)}"] if tokenizer else []
