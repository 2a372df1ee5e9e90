"""The peers of a torchrun group: the store each attempt of a restarted group uses, and the
one line a process says when a peer is gone (utils/engine/distributed.py joins the group)."""
import os

from utils.core.errors import UsageError, UserError

# torchrun's agent shares its store with the processes it starts, and a group it restarts
# (--max-restarts) finds the keys of the attempt before: a process may then connect to a peer
# that is gone (pytorch/pytorch#135712). TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun
# gives each attempt a store of its own.
SHARED_STORE_FIX = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"


def this_attempt(store, per_node, world_size):
    """The store of this attempt of the group: on one node, its keys under the attempt's number
    (every process of the node counts the same restarts). Across nodes the counts differ (a
    node that joins late starts at 0), so torchrun must not share its store there."""
    import torch.distributed as dist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", 0)):
        return store
    if per_node != world_size:
        raise UsageError(f"torchrun --max-restarts across nodes needs {SHARED_STORE_FIX} in torchrun's environment "
                         f"(a restarted group would find the keys of the attempt before: pytorch/pytorch#135712); "
                         f"start it as `{SHARED_STORE_FIX} torchrun ...`")
    return dist.PrefixStore(f"runner/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


LOST_PEER_SIGNS = ("connection reset by peer", "connection closed by peer", "broken pipe", "timed out", "timeout",
                   "communicator was aborted", "nccl error", "socket", "connect")


def lost_peer(error):
    """A one-line UserError for `error` when it is a collective that failed because another
    process of the group is gone (killed, crashed, its node lost) or did not answer within
    --dist-timeout, else None. The process then exits 1 and torchrun restarts the group."""
    import torch.distributed as dist

    text = str(error)
    transport = isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and any(
        word in text for word in ("gloo", "Gloo", "NCCL", "pair.cc", "ProcessGroup")))
    if not transport or not any(sign in text.lower() for sign in LOST_PEER_SIGNS):
        return None
    detail = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    detail = detail.split("] ", 1)[-1] if detail.startswith("[") else detail  # gloo's "[file.cc:545] " prefix
    detail = detail.split(". This is typically")[0]  # gloo's advice to read the other logs
    failure = UserError(f"lost another process of the group ({detail[:160]}); torchrun restarts the group when "
                        f"--max-restarts allows, and train --resume=auto goes on from the newest checkpoint")
    return failure
