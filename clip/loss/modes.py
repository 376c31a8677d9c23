"""The contrastive loss modes, by name: the list clip.loss implements and config validation reads (pure Python,
so reading a config never imports MindSpore). Adding a mode: its function in clip/loss/contrastive.py, one line here."""

LOSS_MODES = {
    "local": "this rank's B rows of the B x W*B logits (default; same gradients as one card with the global batch)",
    "full": "the whole W*B x W*B logit matrix on every rank",
    "local_only": "each rank's own B x B batch: MindFormers' behaviour, a different objective on >1 card",
}
