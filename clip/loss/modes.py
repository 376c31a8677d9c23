"""The loss types and modes, by name: the lists clip.loss implements and config validation reads (pure Python,
so reading a config never imports MindSpore). Adding a mode: its function in clip/loss/contrastive.py, one line here."""

LOSS_TYPES = {
    "clip": "the softmax contrastive loss (clip/loss/contrastive.py)",
    "siglip": "SigLIP's sigmoid loss with a learnable logit bias (clip/loss/sigmoid.py)",
}
SIGLIP_MODES = ("local", "local_only")  # the modes the sigmoid loss has (`full` is the softmax loss's cross-check)

LOSS_MODES = {
    "local": "this rank's B rows of the B x W*B logits (default; same gradients as one card with the global batch)",
    "full": "the whole W*B x W*B logit matrix on every rank",
    "local_only": "each rank's own B x B batch: MindFormers' behaviour, a different objective on >1 card",
}
