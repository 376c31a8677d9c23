"""`python -m clip.eval --config FILE [--task zeroshot|retrieval] [--checkpoint CKPT] [--sharded]`."""
import sys

from clip.eval.cli import main

sys.exit(main())
