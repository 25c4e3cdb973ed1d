"""Many prompts (issue 21): `trace_many`, `circuits trace-batch` (manifest, resume) and sharding
of the prompts over torch.distributed ranks (torchrun; gloo on CPU, NCCL on GPU).

    from circuits.batch import PromptItem, read_prompts, trace_many, trace_batch
    for item, result in trace_many(rm, ["calc: 36+59=", "calc: 12+7="]): ...
    trace_batch(rm, read_prompts("prompts.jsonl"), "out/")     # graphs/ + manifest.jsonl, resumable
"""

from circuits.batch.inputs import PromptItem, read_prompts
from circuits.batch.run import trace_batch
from circuits.batch.trace_many import trace_many

__all__ = ["PromptItem", "read_prompts", "trace_batch", "trace_many"]
