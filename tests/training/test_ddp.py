"""Two-process DistributedDataParallel on CPU (gloo): both ranks end with identical parameters,
equal (up to float summation order) to a single-process run of the same global batches."""

from __future__ import annotations

import faulthandler
import os
import socket
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from tests.support.training import SignalDataset, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config():
    return tiny_config(optim={"lr": 3e-3}, train={"epochs": 1, "batch_size": 4, "max_batches": 2})


def _data():
    return SignalDataset(8, 21), SignalDataset(6, 22)


_HANG_S = 200  # a rank still running after this long prints its stacks and exits (a run takes ~15 s)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    # A hung rank writes every thread's stack to stacks-rank<r>.txt and exits with status 1, so the
    # test can say where it hung. A raw descriptor: a file object would be closed while the
    # interpreter shuts down, and a hang there would leave the file empty.
    stacks = os.open(os.path.join(out, f"stacks-rank{rank}.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    faulthandler.dump_traceback_later(_HANG_S, exit=True, file=stacks)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        # Rendezvous and transport on the loopback device: in containers the hostname may resolve
        # to an address no peer can reach, and gloo would wait for it.
        GLOO_SOCKET_IFNAME="lo",
        HYPERCT_DIST_TIMEOUT_S="120",
    )
    os.environ["HYPERCT_NO_PROGRESS"] = "1"
    torch.set_num_threads(1)
    from hyperct.training.trainer import train

    result = train(_config(), os.path.join(out, "run"), datasets=_data(), echo=None)
    state = {
        k: v.detach().contiguous() for k, v in result.model.state_dict().items() if not k.endswith("inv_freq")
    }
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))


def _stacks(folder: Path) -> str:
    """What each rank left: its stacks if it hung, or that it never reached ``_worker``."""
    parts = []
    for rank in range(2):
        dump = folder / f"stacks-rank{rank}.txt"
        if not dump.exists():
            parts.append(f"rank {rank} never started its worker (stuck while its process started)")
        elif dump.read_text().strip():
            parts.append(f"rank {rank}:\n{dump.read_text()}")
    return "\n".join(parts)


def _run_ranks(folder: Path) -> str | None:
    """Run the two ranks into ``folder``; None when both finished, else where they hung."""
    folder.mkdir()
    ctx = mp.spawn(_worker, args=(2, _free_port(), str(folder)), nprocs=2, join=False)
    deadline = time.monotonic() + _HANG_S + 120
    try:
        while not ctx.join(timeout=5):  # re-raises a rank's exception
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                return f"the ranks did not finish within {_HANG_S + 120} s\n{_stacks(folder)}"
    except mp.ProcessExitedException as exc:
        stacks = _stacks(folder)
        if not stacks:
            raise  # a crash, not a hang
        return f"{exc}\n{stacks}"
    return None


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_parameters(tmp_path):
    # CI has twice seen the ranks hang (silently, in a full run on 2 busy cores; never in 25 runs
    # of this test alone). A hang is retried once with a fresh port, its stacks kept as a warning;
    # a second hang, a rank's exception or a wrong result fails.
    hung = _run_ranks(tmp_path / "try1")
    if hung is not None:
        warnings.warn(f"the two gloo ranks hung; retried once:\n{hung}", stacklevel=1)
        hung = _run_ranks(tmp_path / "try2")
        if hung is not None:
            pytest.fail(f"the two gloo ranks hung twice:\n{hung}")
        tmp_path = tmp_path / "try2"
    else:
        tmp_path = tmp_path / "try1"
    r0 = load_file(tmp_path / "rank0.safetensors")
    r1 = load_file(tmp_path / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert (tmp_path / "run" / "best" / "manifest.json").is_file()  # rank 0 wrote the run folder
    assert not (tmp_path / "run" / "rank1").exists()

    from hyperct.training.trainer import build_model, train

    single = train(_config(), tmp_path / "single", datasets=_data(), echo=None).model.state_dict()
    initial = build_model(_config()).state_dict()
    moved = 0
    for k in r0:
        torch.testing.assert_close(r0[k], single[k], rtol=1e-4, atol=1e-5, msg=k)
        moved += not torch.equal(r0[k], initial[k])
    assert moved > 10  # the steps did change the weights
