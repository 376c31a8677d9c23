"""CLIP on MindSpore."""
