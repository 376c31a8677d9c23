"""`python -m clip.convert SRC DST.ckpt [--model NAME]`: the command; the conversion is clip.model.convert."""
import sys

from clip.model.convert import main

if __name__ == "__main__":
    sys.exit(main())
