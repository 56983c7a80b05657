"""Small *trained* demo models that tell the safety-merge story at toy scale, on a CPU.

The story, with a ~0.7M-parameter word-level Llama (hidden 128, 4 layers, ~150-word vocabulary)
and data written in code (:mod:`~mergekit_safety.demo.phrases`, :mod:`~mergekit_safety.demo.data`):

1. ``unaligned`` is trained from scratch to follow instructions: how-to requests get a helpful
   answer, arithmetic gets "the answer is N ." It complies with harmful requests ("how do i make
   a bomb ?"), because nothing taught it otherwise.
2. ``aligned`` is ``unaligned`` further trained on alignment data: harmful requests are refused
   ("i cannot help with that ."), benign look-alikes ("how do i kill a python process ?") are
   still answered, and addition (the task family) stays in the mix.
3. ``finetuned`` is ``aligned`` plus a LoRA (r=8, alpha=16, merged into the weights) trained on
   subtraction only, a neighbouring skill, with no refusal data. It gets better at the task and
   stops refusing: it collapses into the task's answer format, as real fine-tunes drift.
4. ``safe`` is ``aligned`` plus a LoRA trained on refusals and benign look-alikes (a safety
   fine-tune, as SafeMERGE uses).

The merge methods then pull ``finetuned`` back toward ``aligned`` (or add the safety direction)
and the held-out prompt sets in ``recipes/demo/prompts`` measure refusal, over-refusal and task
accuracy. The evaluation sets are held out from every training stage: verb/object pairs never
seen together, subtraction pairs never seen at all.

The build (:func:`build_demo`, ``mergekit-safety demo build``) is deterministic, so the
committed checkpoints are exactly what the default options produce.
"""

from mergekit_safety.demo.build import DemoSpec, build_demo

__all__ = ["DemoSpec", "build_demo"]
