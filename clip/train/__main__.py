"""`python -m clip.train --config FILE [--set key=value ...]`."""
import sys

from clip.train.loop import main

sys.exit(main())
