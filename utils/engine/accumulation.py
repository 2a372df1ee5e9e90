"""--accumulate: where a batch sits in its accumulation group, and DDP's no_sync for the
batches that only add to the gradients (run_epoch in utils/engine/loop.py uses both)."""
import contextlib

import torch


def accumulation_place(index, accumulate, batches, images, batch_size, size):
    """(first, last, weight) of the epoch's batch `index` (0-based) in its --accumulate group:
    groups of `accumulate` batches from the epoch's start, the last one cut at the epoch's
    end; the weight is the batch's share of its group's images (`size` of them), so the
    summed gradients are those of the group's mean loss, as one large batch's."""
    if accumulate == 1:
        return True, True, 1.0
    group = index // accumulate
    end = min((group + 1) * accumulate, batches)
    in_group = min((group + 1) * accumulate * batch_size, images) - group * accumulate * batch_size
    return index % accumulate == 0, index == end - 1, size / in_group


@contextlib.contextmanager
def gradients_kept_local(objects):
    """DDP's no_sync for every wrapped module: an accumulating batch's forward and backward
    add to the local gradients without an all-reduce (the group's last batch does it)."""
    with contextlib.ExitStack() as stack:
        for obj in objects.values():
            inner = getattr(obj, "_orig_mod", obj)
            if isinstance(inner, torch.nn.parallel.DistributedDataParallel):
                stack.enter_context(inner.no_sync())
        yield
