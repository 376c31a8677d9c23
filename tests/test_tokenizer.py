"""Token ids equal OpenAI's on varied text.

Reference: open_clip's `tokenizer.py` (OpenAI's SimpleTokenizer, MIT). It is loaded straight from
the installed open_clip_torch distribution (installed with --no-deps, because open_clip's package
`__init__` needs torchvision, which is not available here); the module itself needs only
ftfy/regex/numpy/torch. open_clip renamed the special tokens to `<start_of_text>`/`<end_of_text>`
(same ids), so literal special-token strings inside a text are checked separately against
OpenAI's rule.
"""
import importlib.metadata
import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest

import clip
from clip.model.tokenizer import EOT_ID, SOT_ID, clean_text, default_tokenizer, tokenize
from launcher.errors import UserError

TEXTS = [
    "a photo of a cat.",
    "A PHOTO OF A DOG!",
    "",
    "   ",
    "\t\n  \r\n",
    "Hello,   World!!!  123,456.78 -- 3.14e10 #1 @user $5 50% (parens) [brackets] {braces}",
    "don't I'll we've they're she's it'd you'm",
    "DON'T SHOUT",
    "café naïve résumé Ångström Øresund Straße façade coöperate",
    "東京タワーの写真",
    "一只猫坐在垫子上",
    "고양이 사진",
    "кошка на диване",
    "قطة على الأريكة",
    "🐱🐶 emoji 👍🏽 family 👨‍👩‍👧 flags 🇯🇵",
    "Ã©tÃ© mojibake â€œquotedâ€\x9d",
    "&amp;lt;b&amp;gt; html &quot;x&quot; &#39;apos&#39; &eacute; &nbsp;nbsp",
    "tabs\tand\nnewlines\u00a0nbsp\u2003emspace\u200bzero-width",
    "x" * 500,
    " ".join(["word"] * 200),
    "a very long caption " + "with many different words like zebra giraffe elephant " * 20,
    "ﬁ ligature ＦＵＬＬＷＩＤＴＨ ½ ² ℃ ⅷ",
    "mixed1234numbers and 1st 2nd 3rd 10th",
    "'''quotes''' \"double\" ``tex''",
    "\x00\x01 control chars \x7f",
]


@pytest.fixture(scope="module")
def reference():
    path = Path(importlib.metadata.distribution("open_clip_torch").locate_file("open_clip/tokenizer.py"))
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def _random_texts(n, seed):
    """Random strings over ASCII, Latin-1, combining marks, CJK, emoji, whitespace and entities."""
    rng = random.Random(seed)
    pools = [
        [chr(c) for c in range(32, 127)],
        [chr(c) for c in range(0xA0, 0x180)],
        [chr(c) for c in range(0x300, 0x320)],
        [chr(c) for c in range(0x4E00, 0x4E80)],
        [chr(c) for c in range(0x1F600, 0x1F650)],
        [" ", "  ", "\t", "\n", "&amp;", "&lt;", "'s", "'ll"],
    ]
    out = []
    for _ in range(n):
        parts = [rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 60))]
        out.append("".join(parts))
    return out


def test_matches_reference_on_varied_text(reference):
    ours = tokenize(TEXTS)
    ref = reference(TEXTS).numpy()
    assert ours.dtype == np.int32 and ours.shape == (len(TEXTS), 77)
    for i, text in enumerate(TEXTS):
        assert ours[i].tolist() == ref[i].tolist(), repr(text)


def test_matches_reference_on_random_unicode(reference):
    texts = _random_texts(300, seed=1234)
    np.testing.assert_array_equal(tokenize(texts), reference(texts).numpy())


@pytest.mark.parametrize("context_length", [2, 5, 16, 100])
def test_truncation_and_padding_match_reference(reference, context_length):
    texts = [TEXTS[0], TEXTS[18], TEXTS[19], ""]
    ours = tokenize(texts, context_length=context_length)
    assert ours.shape == (4, context_length)
    np.testing.assert_array_equal(ours, reference(texts, context_length=context_length).numpy())


def test_structure_start_end_pad():
    ids = tokenize(["a photo of a cat.", "", "word " * 300])
    assert ids[:, 0].tolist() == [SOT_ID] * 3
    assert ids[1, :3].tolist() == [SOT_ID, EOT_ID, 0] and not ids[1, 2:].any()
    assert ids[2, -1] == EOT_ID, "truncation must keep the end token last"
    assert (ids[0] == EOT_ID).sum() == 1 and ids[0].argmax() == np.flatnonzero(ids[0] == EOT_ID)[0]


def test_single_string_is_one_row():
    assert tokenize("a dog").shape == (1, 77)
    np.testing.assert_array_equal(clip.tokenize("a dog"), tokenize(["a dog"]))


def test_literal_openai_special_tokens_map_to_their_ids(reference):
    """OpenAI's tokenizer matches `<|startoftext|>`/`<|endoftext|>` inside text as the special ids."""
    ids = tokenize("<|startoftext|> a cat <|endoftext|>")[0]
    body = reference.encode("a cat")
    assert ids[:len(body) + 4].tolist() == [SOT_ID, SOT_ID, *body, EOT_ID, EOT_ID]
    renamed = tokenize("<start_of_text> is plain text for OpenAI")[0]
    assert (renamed == SOT_ID).sum() == 1 and renamed[1] == tokenize("<")[0, 1]


def test_cleaning_rules():
    assert clean_text("Ã©tÃ©") == "été"
    assert clean_text("&amp;amp; A  B\n\tC ") == "& a b c"
    assert clean_text("  ") == ""


def test_decode_round_trip():
    tok = default_tokenizer()
    text = "a photo of 東京 with 2 cats 🐱!"
    assert tok.decode(tok.encode(text)).strip() == "a photo of 東京 with 2 cats 🐱!"


@pytest.mark.parametrize("bad", [1, 0, -5, 2.5, "77", True])
def test_bad_context_length_is_user_error(bad):
    with pytest.raises(UserError, match="context_length"):
        tokenize("a cat", context_length=bad)


def test_non_string_text_is_user_error():
    with pytest.raises(UserError, match="text #1 is int"):
        tokenize(["ok", 3])
