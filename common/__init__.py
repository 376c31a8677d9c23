"""What both the launcher and the CLIP workers need, owned by neither: user errors and the one-line CLI parser.

Pure Python, no MindSpore: launcher/ and clip/ both import from here and never from each other.
"""
