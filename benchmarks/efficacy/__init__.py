"""The efficacy study: an unaligned chat model, our own alignment, fine-tunes that lose safety,
and every merge method measured on held-out prompts (see README.md in this folder)."""
