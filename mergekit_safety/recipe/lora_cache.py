"""``base+adapter`` inputs for our commands: merged once, keyed by the adapters' content.

mergekit merges a LoRA into ``<--lora-merge-cache>/<model>_<adapter>``, keyed by path: retrain
the adapter at the same path and it silently reuses the old merge; stop it mid-save and the
half-written directory is reused next time. Our commands (``inspect``, ``sweep``) therefore give
mergekit a cache directory named by a hash of every adapter file the recipe names, check that
each merged copy is complete (``config.json`` is saved last), and copy the base model's tokenizer
beside it so the copy can be evaluated. ``mergekit-yaml`` itself keeps mergekit's keying: give it
a fresh ``--lora-merge-cache`` after changing an adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def adapters_digest(references: Iterable[Any]) -> str:
    """A short hash of every adapter the references name: their files' bytes when local."""
    digest = hashlib.sha256()
    for reference in references:
        if reference.lora is None:
            continue
        digest.update(str(reference).encode())
        folder = Path(reference.lora.path).expanduser()
        for path in sorted(folder.glob("adapter_*")) if folder.is_dir() else ():
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def lora_cache(
    references: Iterable[Any], root: str | None, work_dir: str | Path | None = None
) -> Iterator[str]:
    """The cache to hand mergekit: ``root`` (default: a temporary one, removed after) / digest.

    On the way out, mergekit's process-wide loader cache forgets the merged copies, so a later
    merge in the same process cannot read a removed or outdated one.
    """
    references = list(references)
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="mergekit-safety-lora-", dir=work_dir)
            )
        try:
            yield str(Path(root) / adapters_digest(references))
        finally:
            from mergekit_safety import mergekit_internals

            mergekit_internals.forget_loaded(r for r in references if r.lora is not None)


def merged_copy(reference: Any, cache: str, *, trust_remote_code: bool = False) -> str:
    """The directory of ``reference`` with its adapter merged (mergekit's merge), with tokenizer."""
    if reference.lora is None:
        return reference.model.path
    from mergekit.common import ModelReference

    from mergekit_safety import mergekit_internals

    target = Path(cache) / mergekit_internals.merged_copy_name(reference)
    if target.exists() and not (target / "config.json").is_file():
        shutil.rmtree(target)  # an interrupted merge: mergekit would reuse it as it is
    merged: ModelReference = reference.merged(cache_dir=cache, trust_remote_code=trust_remote_code)
    path = Path(merged.model.path)
    if not (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            reference.model.path, trust_remote_code=trust_remote_code
        )
        tokenizer.save_pretrained(path)
    return str(path)
