"""Small SigLIP-style vocabulary files, trained in-process, in the three shapes users bring: a T5 SentencePiece
model (Unigram; pad 0, EOS 1, unk 2, no BOS), a Gemma SentencePiece model (BPE with byte fallback; pad 0, EOS 1,
BOS 2, unk 3, mask 4; no dummy prefix, identity normalisation) and a Hugging Face tokenizer.json trained by the
`tokenizers` package (T5's specials, Metaspace, EOS appended by the post-processor). The hub's tokenizer.json
files were written by transformers from the SentencePiece models (open_clip's SigLipTokenizer); `hub_directory`
repeats that step, so the reference reads what a user downloads."""
import io
import json
import os
import random

T5_NAME = "timm/ViT-B-16-SigLIP"
MT5_NAME = "timm/ViT-B-16-SigLIP-i18n-256"
GEMMA_NAME = "timm/ViT-B-16-SigLIP2"
_LETTERS = "abcdefghijklmnopqrstuvwxyzäéñßøçü東京猫"


def corpus(seed: int = 0, sentences: int = 200):
    rng = random.Random(seed)
    words = ["".join(rng.choice(_LETTERS) for _ in range(rng.randint(1, 8))) for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(10)) for _ in range(sentences)] + ["a photo of a cat 1234"]


def _sentencepiece(path: str, **options) -> str:
    import sentencepiece

    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=buffer, minloglevel=2,
                                             character_coverage=1.0, **options)
    with open(path, "wb") as file:
        file.write(buffer.getvalue())
    return path


def t5_sentencepiece(path: str, vocab_size: int = 200) -> str:
    return _sentencepiece(path, vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                          bos_id=-1)


def gemma_sentencepiece(path: str, vocab_size: int = 400) -> str:
    return _sentencepiece(path, vocab_size=vocab_size, model_type="bpe", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                          pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", user_defined_symbols=["<mask>"],
                          byte_fallback=True, split_digits=True, add_dummy_prefix=False,
                          remove_extra_whitespaces=False, normalization_rule_name="identity")


def t5_tokenizer_json(path: str, vocab_size: int = 150) -> str:
    """A Unigram model trained by `tokenizers` with T5's special tokens, saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tokenizer.train_from_iterator(corpus(seed=1), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    tokenizer.save(path)
    return path


def hub_directory(source: str, directory: str, gemma: bool) -> str:
    """What the hub holds for `source`: for a SentencePiece model, transformers' conversion with open_clip's
    SigLipTokenizer settings (T5: no extra ids, pad = EOS = 1; Gemma: EOS appended, no BOS, pad 0), saved by
    save_pretrained; for a tokenizer.json, the file beside a T5 tokenizer_config.json naming EOS as pad."""
    os.makedirs(directory, exist_ok=True)
    if source.endswith(".json"):
        with open(source, encoding="utf-8") as file, open(os.path.join(directory, "tokenizer.json"), "w",
                                                          encoding="utf-8") as out:
            out.write(file.read())
        config = {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "pad_token": "</s>",
                  "unk_token": "<unk>", "extra_ids": 0, "legacy": False}
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as out:
            json.dump(config, out)
        return directory
    staging = directory + ".sentencepiece"
    os.makedirs(staging, exist_ok=True)
    if gemma:
        from transformers import GemmaTokenizerFast

        with open(source, "rb") as file, open(os.path.join(staging, "tokenizer.model"), "wb") as out:
            out.write(file.read())
        tokenizer = GemmaTokenizerFast.from_pretrained(staging, padding_side="right", add_bos_token=False,
                                                       add_eos_token=True)
        tokenizer.pad_token_id = 0
    else:
        from transformers import T5TokenizerFast

        with open(source, "rb") as file, open(os.path.join(staging, "spiece.model"), "wb") as out:
            out.write(file.read())
        tokenizer = T5TokenizerFast.from_pretrained(staging, extra_ids=0, legacy=False)
        tokenizer.pad_token_id = 1
    tokenizer.eos_token_id = 1
    tokenizer.save_pretrained(directory)
    return directory


def tiny_open_clip_config(hf_tokenizer_name: str, vocab_size: int) -> dict:
    """An open_clip model config naming a SentencePiece / Hugging Face vocabulary, with SigLIP's text tower (no
    causal mask, pooled at the last position, so no padding may be trimmed) on a tiny CLIP image tower."""
    return {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 16, "vocab_size": vocab_size, "width": 32, "heads": 2, "layers": 1,
                         "hf_tokenizer_name": hf_tokenizer_name, "tokenizer_kwargs": {"clean": "canonicalize"},
                         "no_causal_mask": True, "pool_type": "last", "proj_bias": True}}


def open_clip_tokenizer_module():
    """open_clip's tokenizer.py loaded from its file: its package __init__ would import the model code too."""
    import importlib.metadata
    import importlib.util
    from pathlib import Path

    path = Path(importlib.metadata.distribution("open_clip_torch").locate_file("open_clip/tokenizer.py"))
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_siglip_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
