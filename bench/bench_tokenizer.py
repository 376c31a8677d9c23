"""SigLIP tokenizers: captions per CPU-second, ours (clip.model.hf_tokenizer) beside open_clip's HFTokenizer
(transformers) on the same files and captions, same run, as the data pipeline calls them (one caption per call)
and as evaluation does (a batch of prompts per call). OpenAI's BPE (ours) is listed for scale.

The vocabularies are the test's (tests/tokenizer_files.py: a T5 SentencePiece model, a Gemma SentencePiece
model and the hub-style tokenizer.json files transformers writes from them); the captions are generated words
of the same alphabet with punctuation and upper case, so the canonicalising clean-up has work to do. Ours and
open_clip's run in interleaved rounds (best of each: the machine is shared), and their ids must be equal: the
run fails otherwise. Writes bench/results/tokenizer.json.

    python bench/bench_tokenizer.py [--captions 2000] [--rounds 3]
"""
import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from launcher.safe_write import write_json

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "tokenizer.json"
sys.path.insert(0, str(REPO / "tests"))


def captions(n: int, seed: int = 0) -> list:
    import tokenizer_files

    rng = random.Random(seed)
    words = " ".join(tokenizer_files.corpus(seed=5, sentences=20)).split()
    return [" ".join(rng.choice(words).capitalize() if rng.random() < 0.2 else rng.choice(words)
                     for _ in range(rng.randint(4, 20))) + rng.choice([".", "!", "?", ", ok."]) for _ in range(n)]


def cpu_rate(call, items, batch: int) -> float:
    start = time.process_time()
    for i in range(0, len(items), batch):
        call(items[i:i + batch])
    return len(items) / (time.process_time() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import tokenizer_files
    from clip.model.hf_tokenizer import VocabularyTokenizer
    from clip.model.tokenizer import tokenize

    reference = tokenizer_files.open_clip_tokenizer_module()
    texts = captions(args.captions)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        t5_model = tokenizer_files.t5_sentencepiece(os.path.join(root, "t5.model"))
        gemma_model = tokenizer_files.gemma_sentencepiece(os.path.join(root, "gemma.model"))
        t5_hub = tokenizer_files.hub_directory(t5_model, os.path.join(root, "t5_hub"), gemma=False)
        gemma_hub = tokenizer_files.hub_directory(gemma_model, os.path.join(root, "gemma_hub"), gemma=True)
        cases = [("T5 tokenizer.json", t5_hub + "/tokenizer.json", t5_hub, tokenizer_files.T5_NAME),
                 ("T5 SentencePiece", t5_model, t5_hub, tokenizer_files.T5_NAME),
                 ("Gemma tokenizer.json", gemma_hub + "/tokenizer.json", gemma_hub, tokenizer_files.GEMMA_NAME),
                 ("Gemma SentencePiece", gemma_model, gemma_hub, tokenizer_files.GEMMA_NAME)]
        for name, path, hub, hf_name in cases:
            ours = VocabularyTokenizer(path, hf_tokenizer_name=hf_name, context_length=64, vocab_size=1000,
                                       clean="canonicalize")
            theirs = reference.HFTokenizer(hub, context_length=64, clean="canonicalize")
            if not np.array_equal(ours(texts[:200]), theirs(texts[:200]).numpy()):
                raise SystemExit(f"{name}: ids differ from open_clip's")
            for mode, batch in (("one caption per call", 1), ("batches of 256", 256)):
                best = {"ours": 0.0, "open_clip": 0.0}
                for _ in range(args.rounds):
                    best["ours"] = max(best["ours"], cpu_rate(ours, texts, batch))
                    best["open_clip"] = max(best["open_clip"], cpu_rate(theirs, texts, batch))
                rows.append({"vocabulary": name, "mode": mode, "ours_per_cpu_s": round(best["ours"]),
                             "open_clip_per_cpu_s": round(best["open_clip"]),
                             "ratio": round(best["ours"] / best["open_clip"], 2)})
                print(rows[-1], flush=True)
    for mode, batch in (("one caption per call", 1), ("batches of 256", 256)):
        rate = max(cpu_rate(lambda t: tokenize(t, 77), texts, batch) for _ in range(args.rounds))
        rows.append({"vocabulary": "OpenAI BPE (ours, for scale)", "mode": mode, "ours_per_cpu_s": round(rate)})
        print(rows[-1], flush=True)
    write_json(str(RESULTS), {
        "what": "captions tokenized per CPU-second (context 64), ours vs open_clip's HFTokenizer, same files",
        "command": f"python bench/bench_tokenizer.py --captions {args.captions} --rounds {args.rounds}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other "
                   f"engineers' test runs at the time (best of {args.rounds} interleaved rounds)",
        "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
