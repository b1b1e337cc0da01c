"""A new executor is one file: each class here is a whole executor, passed to plane, line and connect as
``evaluator=`` (it runs in this process) or ``client=`` (it runs the plan elsewhere), and gives the loop's values."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets.connect import connect
from landscape_widgets.driver import Execution
from landscape_widgets.executor import Executor

from helpers import SmallNet

CE = nn.CrossEntropyLoss()


class PlainLoop(Executor):
    """Each point written into the private copy and evaluated over all batches: the per-point loop without its
    accelerations, in a dozen lines."""
    name = "plain"

    def start(self, problem, plan):
        return PlainRun(problem, plan)


class PlainRun:
    def __init__(self, problem, plan):
        self.problem, self.plan, self.points = problem, plan, 0

    def tiles(self, coords, todo):
        private, data, objective = self.plan.private, self.problem.data, self.problem.objective
        moving, hook = self.plan.moving(), self.plan.point_hook(self.problem)
        try:
            for start, stop in todo:
                values = np.empty((stop - start, objective.width))
                for p, c in enumerate(coords[start:stop]):
                    with torch.no_grad():
                        for m in moving:
                            m.target.copy_(m.base)
                            for ck, dk in zip(c, m.dirs):
                                if dk is not None:
                                    m.target.add_(dk, alpha=float(ck))
                    if hook is not None:
                        hook()
                    acc, total = 0.0, 0
                    with torch.inference_mode():
                        for x, y, n in data.batches(private.device):
                            acc = acc + objective.evaluate(private.module, x, y).double() * n
                            total += n
                    values[p] = (acc / total).cpu().numpy()
                    self.points += 1
                yield start, stop, values
        finally:
            private.reset()

    def record(self):
        return Execution("plain", "plain", facts={"points": self.points})


class InAnotherProcess(Executor):
    """What a backend that runs plans in other processes does (Ray, a job queue): the problem and the plan travel
    pickled (``to_worker``), are rebuilt on the other side and evaluated there by the plan's own evaluator; tiles
    come back in any order (here: last first)."""
    name = "elsewhere"

    def start(self, problem, plan):
        return ElsewhereRun(pickle.dumps((problem.to_worker(), plan.to_worker())), plan.evaluator)


class ElsewhereRun:
    def __init__(self, job, evaluator):
        self.job, self.evaluator, self.tiles_done = job, evaluator, 0

    def tiles(self, coords, todo):
        shipped_problem, shipped_plan = pickle.loads(self.job)  # on "the worker"
        problem = shipped_problem.build()
        plan = shipped_plan.build(problem)
        run = plan.executor.start(problem, plan)
        for start, stop in reversed(list(todo)):
            (_a, _b, values), = run.tiles(np.asarray(coords[start:stop]), [(0, stop - start)])
            self.tiles_done += 1
            yield start, stop, values

    def record(self):
        return Execution("elsewhere", self.evaluator, facts={"tiles": self.tiles_done}, where="another process")


@pytest.fixture
def ls(small):
    model, data = small
    return lw.Landscape(model, CE, data, device="cpu")


def test_an_executor_passed_as_evaluator_runs_plane_line_and_connect(ls):
    plain = PlainLoop()
    surf = ls.plane(resolution=(5, 4), progress=False, evaluator=plain)
    np.testing.assert_allclose(surf.losses, ls.plane(resolution=(5, 4), progress=False, evaluator="loop").losses,
                               rtol=1e-6)
    assert surf.meta["evaluator"] == "plain" and surf.meta["plain"] == {"points": 20}
    assert surf.execution.note("cpu") == ""
    line = ls.line(steps=7, progress=False, evaluator=plain)
    np.testing.assert_allclose(line.losses, ls.line(steps=7, progress=False, evaluator="loop").losses, rtol=1e-6)
    other = SmallNet(seed=4)  # BatchNorm: its statistics re-estimated at every point (the plan's point hook)
    curve = connect(ls.problem, other, steps=5, epochs=1, progress=False, evaluator=plain)
    loop = connect(ls.problem, other, steps=5, epochs=1, progress=False, evaluator="loop")
    np.testing.assert_allclose(curve.losses, loop.losses, rtol=1e-6)
    np.testing.assert_allclose(curve.meta["line_losses"], loop.meta["line_losses"], rtol=1e-6)


def test_an_executor_passed_as_client_runs_the_plan_elsewhere(ls, tmp_path):
    elsewhere = InAnotherProcess()
    surf = ls.plane(resolution=(6, 5), progress=False, client=elsewhere, store=tmp_path)
    np.testing.assert_array_equal(surf.losses, ls.plane(resolution=(6, 5), progress=False).losses)
    assert surf.meta["evaluator"] == "auto" and surf.meta["elsewhere"]["tiles"] == 1
    assert surf.execution.note("cpu") == " on another process" and surf.meta["store"]["tiles_computed"] == 1
    line = ls.line(steps=9, progress=False, client=elsewhere, evaluator="vmap")
    np.testing.assert_allclose(line.losses, ls.line(steps=9, progress=False, evaluator="loop").losses, rtol=1e-5)
    assert line.meta["evaluator"] == "vmap"


def test_the_evaluator_names_the_executors_it_knows():
    with pytest.raises(ValueError, match="or an Executor"):
        lw.Landscape(SmallNet(), CE, (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))).line(
            steps=3, progress=False, evaluator="ray")


def test_the_record_says_where_the_points_ran():
    """``Execution.note``: the words a status line shows, empty for the plain loop on a CPU."""
    assert Execution("vmap", "auto: vmap", rule="triton").note("cuda:0") == " on cuda:0, batched (triton)"
    assert Execution("loop", "auto: loop").note("cuda:0") == " on cuda:0, per-point loop"
    assert Execution("loop", "loop").note("cpu") == "" and Execution("vmap", "vmap", rule="vmap").note("cpu") == \
        " on cpu, batched (vmap)"
    dask = Execution("dask", "auto", facts={"workers": 1}, where="1 Dask worker")
    assert dask.note("cpu") == " on 1 Dask worker" and dask.meta() == {"evaluator": "auto", "dask": {"workers": 1}}
