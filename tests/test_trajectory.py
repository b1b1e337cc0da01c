"""lw.Trajectory: recording, the memory bound, checkpoints, errors."""
import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples

from _trajdata import same, snapshot, trained


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def test_record_copies_weights_steps_losses_and_leaves_model_alone():
    model = examples.digits_mlp()
    model.train()
    before = snapshot(model)
    traj = lw.Trajectory()
    traj.record(model, loss=torch.tensor(2.5))
    assert same(before, snapshot(model))
    w0 = flat(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    traj.record(model, loss=1.5, step=10)
    traj.record(model)
    np.testing.assert_array_equal(traj.matrix()[0], w0)  # a copy, not a view of the live weights
    np.testing.assert_array_equal(traj.matrix()[1], flat(model))
    np.testing.assert_array_equal(traj.steps, [0, 10, 2])
    np.testing.assert_array_equal(traj.losses, [2.5, 1.5, np.nan])
    sd = traj.state_dict(0)
    assert list(sd) == [n for n, _ in model.named_parameters()]
    assert torch.equal(sd["0.weight"], before[0]["0.weight"])
    assert len(traj) == 3 and traj.num_recorded == 3 and traj.stride == 1


def test_train_records_every_epoch_and_global_rng_untouched():
    model, traj, _ = trained(epochs=4)  # (building nn.Linear layers draws from the global RNG: not ours)
    assert len(traj) == 5
    np.testing.assert_array_equal(traj.matrix()[-1], flat(model))
    assert np.isnan(traj.losses[0]) and np.isfinite(traj.losses[1:]).all()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    traj.record(model)
    traj.embed()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))


def expected_kept(num, capacity):
    """The snapshots the documented policy keeps: multiples of the smallest power-of-two stride that fits, plus the
    latest."""
    stride = 1
    while True:
        kept = sorted(set(range(0, num, stride)) | {num - 1})
        if len(kept) <= capacity:
            return kept, stride
        stride *= 2


@pytest.mark.parametrize("num", [1, 5, 6, 7, 13, 64, 100])
def test_thinning_policy_keeps_evenly_spaced_snapshots_first_and_last(num):
    model = nn.Linear(3, 2)  # 8 parameters: 32 bytes per snapshot
    traj = lw.Trajectory(max_bytes=6 * 32)
    for r in range(num):
        with torch.no_grad():
            model.bias.fill_(r)
        traj.record(model, loss=float(r))
    kept, stride = expected_kept(num, 6)
    np.testing.assert_array_equal(traj.steps, kept)
    np.testing.assert_array_equal(traj.matrix()[:, -1], kept)  # the weights that go with each step
    np.testing.assert_array_equal(traj.losses, kept)
    assert traj.stride == stride and len(traj) <= traj.capacity == 6 and traj.nbytes <= traj.max_bytes


@pytest.mark.slow
def test_memory_bound_holds_for_long_recording_of_a_million_parameter_model():
    model = nn.Linear(1000, 1000)  # 1,001,000 parameters, 4 MB per snapshot
    budget = 40 * 2 ** 20
    traj = lw.Trajectory(max_bytes=budget)
    snap = 4 * 1_001_000
    tracemalloc.start()
    try:
        for step in range(300):  # 1.2 GB if every snapshot were kept
            with torch.no_grad():
                model.bias[0] = step
            traj.record(model, loss=float(step))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert traj.capacity == budget // snap == 10
    assert traj.nbytes <= budget and len(traj) <= 10
    # the store plus the one snapshot in flight, plus a little bookkeeping
    assert peak <= budget + snap + 2 ** 20, peak
    assert traj.steps[0] == 0 and traj.steps[-1] == 299 and traj.num_recorded == 300
    assert traj.matrix()[-1, 1000 * 1000] == 299.0


def test_from_checkpoints_state_dicts_paths_and_model_filter(tmp_path):
    model = examples.digits_cnn()  # has BatchNorm buffers
    traj = lw.Trajectory()
    paths, sds = [], []
    for k in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * k)
            model[1].running_mean.add_(k)
        traj.record(model, loss=k)
        sd = {n: t.clone() for n, t in model.state_dict().items()}
        sds.append(sd)
        paths.append(tmp_path / f"ck{k}.pt")
        torch.save(sd, paths[-1])
    from_paths = lw.Trajectory.from_checkpoints(paths, losses=[0, 1, 2], model=model)
    from_dicts = lw.Trajectory.from_checkpoints(sds, steps=[5, 6, 7], model=model)
    for t in (from_paths, from_dicts):
        assert t.names == traj.names
        np.testing.assert_array_equal(t.matrix(), traj.matrix())
    np.testing.assert_array_equal(from_paths.losses, [0, 1, 2])
    np.testing.assert_array_equal(from_dicts.steps, [5, 6, 7])
    every_float = lw.Trajectory.from_checkpoints(sds)  # without model= the BN statistics come along
    assert "1.running_mean" in every_float.names and "1.running_mean" not in traj.names
    wrapped = lw.Trajectory.from_checkpoints([{"state_dict": sd} for sd in sds], model=model)
    np.testing.assert_array_equal(wrapped.matrix(), traj.matrix())


def test_errors_are_clear():
    with pytest.raises(ValueError, match="max_bytes"):
        lw.Trajectory(max_bytes=0)
    with pytest.raises(ValueError, match="max_bytes >= 96"):
        lw.Trajectory(max_bytes=64).record(nn.Linear(3, 2))
    with pytest.raises(TypeError, match="torch.nn.Module or a state_dict"):
        lw.Trajectory().record([1, 2])
    traj = lw.Trajectory().record(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="shape"):
        traj.record(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="lacks tensor"):
        traj.record(nn.Linear(3, 2, bias=False))
    with pytest.raises(ValueError, match="empty"):
        lw.Trajectory().matrix()
    with pytest.raises(ValueError, match="no floating-point"):
        lw.Trajectory().record({"n": torch.tensor(3)})
    with pytest.raises(ValueError, match="losses has 1 entries for 2"):
        lw.Trajectory.from_checkpoints([nn.Linear(3, 2), nn.Linear(3, 2)], losses=[1.0])
    with pytest.raises(TypeError, match="list of state_dicts"):
        lw.Trajectory.from_checkpoints("ck.pt")


def test_reading_while_recording_stays_consistent():
    """A widget thread embeds while training still records: steps, losses and weights must come from one moment."""
    import threading

    model = nn.Linear(3, 2)
    traj = lw.Trajectory(max_bytes=8 * 32)  # 8 snapshots: thinning happens all the time
    stop = threading.Event()

    def train():
        step = 0
        while not stop.is_set():
            with torch.no_grad():
                model.bias.fill_(float(step))
            traj.record(model, loss=float(step))
            step += 1

    worker = threading.Thread(target=train)
    worker.start()
    try:
        for _ in range(300):
            steps, losses, vectors = traj.consistent()
            assert len(steps) == len(losses) == len(vectors)
            np.testing.assert_array_equal(losses, steps)
            np.testing.assert_array_equal([v[-1] for v in vectors], steps)  # each weight goes with its step
    finally:
        stop.set()
        worker.join()
