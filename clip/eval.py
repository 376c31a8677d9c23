"""`python -m clip.eval`: the evaluation command line (the work is in clip.evaluate)."""
import sys

from clip.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
