"""The gather-based planner sweep against the conv-based one it replaced (same features, same gradients), and
the exact gradient through each value's source."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from gymnasium import spaces

import maze_env
from agents.onnx_graph import export_to_bytes
from mazes.grid import generate_maze, open_directions, square_to_cell
from rl_maze import planner as planner_module
from rl_maze import value_iteration
from rl_maze.planner import MazePlannerExtractor
from rl_maze.value_iteration import settle, value_sources


class ConvSweepExtractor(MazePlannerExtractor):
    """The planner's forward as it was before the gather sweep: conv neighbours plus a wall penalty."""

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        passages = observations[:, :4]
        agent = observations[:, maze_env.AGENT_CHANNEL : maze_env.AGENT_CHANNEL + 1]
        step_cost = F.softplus(self.raw_step_cost) + 1e-3
        reward = self.reward_map(observations)
        move_bias = -4.0 * self.floor * (1.0 - passages) - step_cost

        def sweep(values: torch.Tensor) -> torch.Tensor:
            return torch.maximum(reward, (self._neighbours(values) + move_bias).amax(dim=1, keepdim=True))

        values = reward
        for _ in range(self.sweeps):  # every sweep differentiated: the exact gradient
            values = sweep(values)
        own = (values * agent).sum(dim=(2, 3))
        around = (self._neighbours(values) * agent).sum(dim=(2, 3))
        gated = around - 4.0 * self.floor * (1.0 - (passages * agent).sum(dim=(2, 3)))
        diffs = torch.clamp((gated - own) / step_cost, -3.0, 3.0)
        open_here = (passages * agent).sum(dim=(2, 3))
        return torch.cat((diffs, open_here, own / self.floor), dim=1)


def maze_observations(maze_size: int, count: int, seed: int) -> torch.Tensor:
    """Observations of random training mazes with the agent on a random cell."""
    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(count):
        maze = generate_maze(maze_size, int(rng.integers(0, maze_env.TRAIN_SEED_LIMIT)))
        agent = (int(rng.integers(0, maze_size)), int(rng.integers(0, maze_size)))
        goal = square_to_cell(maze.goal)
        batch.append(maze_env.encode_observation(open_directions(maze), agent, goal))
    return torch.as_tensor(np.stack(batch), dtype=torch.float32)


def perturbed_pair(
    maze_size: int, sweeps: int | None, seed: int
) -> tuple[MazePlannerExtractor, ConvSweepExtractor]:
    """The new extractor and the reference, with the same weights moved away from the prior."""
    space = spaces.Box(0, 1, shape=(maze_env.N_OBS_CHANNELS, maze_size, maze_size), dtype=np.uint8)
    torch.manual_seed(seed)
    new = MazePlannerExtractor(space, sweeps=sweeps)
    with torch.no_grad():
        for parameter in new.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    reference = ConvSweepExtractor(space, sweeps=sweeps)
    reference.load_state_dict(new.state_dict())
    return new, reference


@pytest.mark.parametrize(
    ("maze_size", "sweeps"),
    [(2, None), (5, None), (10, None), (10, 12), (10, 5), (20, None)],
)
def test_gather_sweeps_give_the_conv_sweeps_features_and_gradients(
    maze_size: int, sweeps: int | None
) -> None:
    """Also with too few sweeps to converge (12 and 5 at 10x10), where early stopping cannot hide a change."""
    new, reference = perturbed_pair(maze_size, sweeps, seed=maze_size)
    observations = maze_observations(maze_size, 24, seed=maze_size)
    features, expected = new(observations), reference(observations)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(expected)
    (features * weights).sum().backward()
    (expected * weights).sum().backward()
    gradients = assert_same_gradients(new, reference)
    assert gradients >= 3, "the comparison must cover gradients that flow"


def assert_same_gradients(new: MazePlannerExtractor, reference: MazePlannerExtractor) -> int:
    """Each parameter's gradient is the same in both; how many of them are non-zero."""
    gradients = 0
    for (name, mine), (_, theirs) in zip(new.named_parameters(), reference.named_parameters(), strict=True):
        assert mine.grad is not None and theirs.grad is not None, name
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-5, msg=name)
        gradients += int(theirs.grad.abs().sum() > 0)
    return gradients


def test_an_onnx_export_on_another_thread_leaves_this_threads_planner_on_its_training_path() -> None:
    """One run exporting its policy must not change how runs on other threads plan (and differentiate)."""
    inside_export: dict[str, bool] = {}
    entered, release = threading.Event(), threading.Event()

    class Blocking(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inside_export["exporting"] = planner_module._exporting()
            entered.set()
            release.wait(30)
            return x * 2

    def export() -> None:  # as the service exports a policy
        export_to_bytes(Blocking(), np.ones((2, 3), dtype=np.float32), ("doubled",), 17)

    exporter = threading.Thread(target=export)
    exporter.start()
    try:
        assert entered.wait(60), "the export did not start"
        assert torch.onnx.is_in_onnx_export(), "torch's flag is process-wide: the case this test is about"
        assert not planner_module._exporting()
        new, reference = perturbed_pair(10, None, seed=10)
        observations = maze_observations(10, 8, seed=10)
        weights = torch.randn(8, 9)
        (new(observations) * weights).sum().backward()
        (reference(observations) * weights).sum().backward()
        assert assert_same_gradients(new, reference) >= 3
    finally:
        release.set()
        exporter.join(60)
    assert inside_export == {"exporting": True}


@pytest.mark.parametrize("maze_size", [10, 30])
def test_the_exported_sweeps_are_one_loop_with_a_fixed_trip_count_and_the_same_features(
    maze_size: int,
) -> None:
    import onnx
    import onnxruntime

    torch.manual_seed(maze_size)
    space = spaces.Box(0, 1, shape=(maze_env.N_OBS_CHANNELS, maze_size, maze_size), dtype=np.uint8)
    # The sweeps, as the export falls back to them (a frozen planner first reads its maze's tree:
    # tests/test_tree_distances.py).
    planner = MazePlannerExtractor(space, learn_planner=False, agent_blind=True).eval()
    planner.tree_export = False
    observations = maze_observations(maze_size, 6, seed=maze_size)
    with torch.no_grad():
        graph = onnx.load_from_string(export_to_bytes(planner, observations.numpy(), ("features",), 17))
        expected = planner.plan(observations)

    # K sweeps (271 at 30x30) were once K unrolled copies of their nodes; now the graph is as small at
    # every size, its sweeps inside `Loop` nodes that run exactly K sweeps (no early exit: a fixed count).
    loops = [node for node in graph.graph.node if node.op_type == "Loop"]
    assert loops and len(graph.graph.node) < 100, [node.op_type for node in graph.graph.node]
    for loop in loops:
        body = next(attribute.g for attribute in loop.attribute if attribute.name == "body")
        assert not any(node.op_type in ("Equal", "Not", "If") for node in body.node)
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {session.get_inputs()[0].name: observations.numpy()})
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("maze_size", [2, 5, 10, 30])
def test_each_settled_value_is_its_sources_reward_less_a_step_cost_per_move(maze_size: int) -> None:
    """``value_sources`` on random reward maps: every value is ``r(source) - c * moves`` (what carries
    the gradient), every source is its own source with zero moves, and there are fewer sources than cells."""
    planner, _ = perturbed_pair(maze_size, None, seed=maze_size)
    observations = maze_observations(maze_size, 8, seed=maze_size)
    with torch.no_grad():
        reward = planner.reward_map(observations).flatten(1)
        move_index = planner._move_index(observations[:, :4])
        step_cost = planner._step_cost()
        values = settle(reward, move_index, step_cost, planner.sweeps, planner.cells)
    source, moves = value_sources(values, reward, move_index, planner.cells)
    torch.testing.assert_close(reward.gather(1, source) - step_cost * moves, values, rtol=1e-5, atol=1e-4)
    assert torch.equal(source.gather(1, source), source)
    assert torch.equal(moves.gather(1, source), torch.zeros_like(moves))
    if maze_size > 2:
        assert bool((moves > 0).any()), "some values must come from another cell"


def test_converged_values_are_differentiated_without_unrolling_the_sweeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cheap path is the one taken once the values converge; unconverged ones unroll all sweeps."""
    planner, _ = perturbed_pair(10, None, seed=3)
    observations = maze_observations(10, 8, seed=3)
    reward = planner.reward_map(observations).flatten(1)
    move_index = planner._move_index(observations[:, :4])
    step_cost = planner._step_cost()

    def unrolled(*args: object) -> torch.Tensor:
        raise AssertionError("unrolled the sweeps")

    monkeypatch.setattr(value_iteration, "run_sweeps", unrolled)
    values = value_iteration.differentiable_values(
        reward, move_index, step_cost, planner.sweeps, planner.cells
    )
    assert values.requires_grad
    with pytest.raises(AssertionError, match="unrolled"):
        value_iteration.differentiable_values(reward, move_index, step_cost, 2, planner.cells)


@pytest.mark.parametrize("sweeps", [5, 30, None])
def test_differentiable_values_equal_the_unrolled_sweeps_even_in_part_converged_batches(
    sweeps: int | None,
) -> None:
    """At 30 sweeps 10 of these 16 10x10 maps have converged and 6 have not: each row gets its own path."""
    planner, _ = perturbed_pair(10, sweeps, seed=5)
    observations = maze_observations(10, 16, seed=5)
    passages = observations[:, :4]
    move_index = planner._move_index(passages)
    weights = torch.randn(16, planner.cells)
    gradients = []
    for differentiate in (value_iteration.differentiable_values, None):
        planner.zero_grad()
        reward, step_cost = planner.reward_map(observations).flatten(1), planner._step_cost()
        if differentiate is None:
            values = value_iteration.run_sweeps(
                reward, reward, move_index, step_cost, planner.sweeps, planner.cells
            )
        else:
            values = differentiate(reward, move_index, step_cost, planner.sweeps, planner.cells)
        (values * weights).sum().backward()
        gradients.append(
            [parameter.grad.clone() for parameter in planner.parameters() if parameter.grad is not None]
        )
    for mine, theirs in zip(*gradients, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
