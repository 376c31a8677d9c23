"""`python -m clip.predict`: the command; the pipeline is clip.eval.predict."""
import sys

from clip.eval.predict import main

if __name__ == "__main__":
    sys.exit(main())
