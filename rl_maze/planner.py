"""The planner networks of our SB3 agents: a value-iteration feature extractor, DQN's Q-head and policy.

Why a planner: a policy that only reacts to the full maze picture (an MLP over the grid) cannot find a path
in a maze it has never seen; measured on this project, naive PPO reaches 0% on even one fixed 10x10 maze.
``MazePlannerExtractor`` is a value-iteration-network style extractor (Tamar et al. 2016): a small conv net
turns the observation into a reward map, then a fixed number ``K`` of max-plus value-iteration sweeps
propagate value through open passages (the passage bits of the observation gate each move), and the
values around the agent are read out for small policy / value (or Q) heads. Only the observation (walls,
agent, goal) is used; the sweeps are ordinary tensor ops with a fixed trip count, so the policy exports to
ONNX. With ``prior`` (the ``planner`` policy) the reward map is initialised to mark the goal cell as the
value source and the step cost to one, so that the features of an untrained model already point along
shortest paths and RL only has to learn the heads that turn them into moves; without it (the
``planner_learned`` policy) both start random and are learned from reward alone (see ``agents.policies``).
"""

from __future__ import annotations

import math

import gymnasium
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import nn

from rl_maze.feature_memo import DEFAULT_CAPACITY, FeatureMemo
from rl_maze.observation import AGENT_CHANNEL, GOAL_CHANNEL, N_OBS_CHANNELS, neighbour_cells
from rl_maze.tree_distances import goal_distances, jump_rounds, tour_tables
from rl_maze.value_iteration import (
    differentiable_values,
    planning_sweeps,
    run_sweeps,
    scripted_sweeps,
    settle,
)

# Read-out features: 4 neighbour value differences, 4 passage bits, 1 own value.
PLANNER_FEATURES: int = 9
_GOAL_PRIOR_WEIGHT: float = 8.0
_DIFF_CLIP: float = 3.0
# An agent-blind planner's value memo holds at most this many floats (64 MiB): 65,536 mazes up to 16x16,
# 18,641 at 30x30.
_VALUE_MEMO_FLOATS: int = 1 << 24


def _exporting() -> bool:
    """Whether this thread is tracing or compiling the model (ONNX export), where control flow must be fixed.

    Not ``torch.onnx.is_in_onnx_export()``: that flag is process-wide, so while one run exported its
    policy every other run training on a thread of the same service took the export path (all K sweeps
    with gradients, no feature memo). The TorchScript exporter traces, and tracing is per thread.
    """
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling())


class MazePlannerExtractor(BaseFeaturesExtractor):
    """Value-iteration feature extractor for ``(6, N, N)`` maze observations (see module docstring)."""

    # Whether an ONNX export of a frozen agent-blind planner reads goal distances off the maze's tree
    # instead of running the sweeps (see ``value_map``); the export sets it False to fall back.
    tree_export: bool = True

    def __init__(
        self,
        observation_space: gymnasium.spaces.Box,
        sweeps: int | None = None,
        hidden: int = 16,
        learn_planner: bool = True,
        prior: bool = True,
        agent_blind: bool = False,
        reward_model: bool = False,
    ) -> None:
        """Build the extractor.

        :param observation_space: the env's observation space, shape ``(6, N, N)``.
        :param sweeps: value-iteration sweeps ``K`` (default ``planning_sweeps(N)``).
        :param hidden: channels of the reward-map conv layer.
        :param learn_planner: also train the reward map and step cost (False: keep them as initialised and
            train only the heads; only sensible with ``prior``).
        :param prior: start from the hand-set prior (goal cell = value source, step cost 1); False: a
            random initialisation of the reward map and step cost (drawn from torch's RNG, which SB3 seeds).
        :param agent_blind: the reward map does not see the agent channel, so the value map is a property
            of the maze alone (its passages and goal): a frozen planner then plans each maze once and
            reads every position in it from the same values (see ``forward``). False for models saved
            before the option (their reward map saw the agent).
        :param reward_model: the reward map is also trained to predict which moves end an episode with the
            goal reward, from the agent's own transitions (``rl_maze.reward_model``, applied by the
            algorithms in ``rl_maze.algorithms``); only sensible with ``learn_planner``.
        """
        super().__init__(observation_space, PLANNER_FEATURES)
        size = int(observation_space.shape[1])
        self.sweeps = sweeps if sweeps is not None else planning_sweeps(size)
        # Cells out of reach sit at -floor; reached cells stay above it (at most N*N-1 steps of cost ~1).
        self.floor = float(2 * size * size)
        self.cells = size * size
        self.agent_blind = agent_blind
        self.reward_model = reward_model
        # Multiplies the observation before the reward map: zero on the agent channel when agent-blind.
        channel_mask = torch.ones(1, N_OBS_CHANNELS, 1, 1)
        if agent_blind:
            channel_mask[0, AGENT_CHANNEL] = 0.0
        self.register_buffer("channel_mask", channel_mask, persistent=False)
        self.reward_conv = nn.Sequential(
            nn.Conv2d(N_OBS_CHANNELS, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 1, 1)
        )
        self.goal_weight = nn.Parameter(torch.tensor(_GOAL_PRIOR_WEIGHT))
        self.goal_bias = nn.Parameter(torch.tensor(-_GOAL_PRIOR_WEIGHT / 2))
        self.raw_step_cost = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))  # softplus(x) == 1
        self.prior = prior
        with torch.no_grad():
            self.shrink_reward_output()
            if not prior:
                # No hint where value comes from: a nearly flat random map, so that many cells start as
                # value sources and gradients reach their rewards (at 10x10 rewards spread over 1-8 units
                # where they spread over 21-125 at torch's default scale, from which seeds got stuck on a
                # source next to the goal: issue 18), a goal weight as small, the step cost anywhere in
                # about [0.3, 1.0].
                self.goal_weight.normal_(0.0, 0.05)
                self.goal_bias.normal_(0.0, 0.5)
                self.raw_step_cost.uniform_(-1.0, 0.5)
        self.requires_grad_(learn_planner)
        # What a frozen planner planned is looked up rather than planned again (see rl_maze.feature_memo):
        # the value map of each maze when agent-blind, else the features of each observation.
        self.memo = (
            FeatureMemo(self.cells, capacity=min(DEFAULT_CAPACITY, _VALUE_MEMO_FLOATS // self.cells))
            if agent_blind
            else FeatureMemo(PLANNER_FEATURES)
        )
        # One fixed 3x3 kernel per direction picks that neighbour's value (zero outside the maze): used
        # once per forward for the read-out at the agent.
        kernels = torch.zeros(4, 1, 3, 3)
        for channel, (row, col) in enumerate(((0, 1), (1, 2), (2, 1), (1, 0))):  # up, right, down, left
            kernels[channel, 0, row, col] = 1.0
        self.register_buffer("neighbour_kernels", kernels, persistent=False)
        # Flat index of each cell's neighbour per direction (the cell itself off the board), and of the
        # cell itself: a sweep gathers all four neighbour values in one op (see ``_move_index``).
        itself = torch.arange(size * size).reshape(1, size * size)
        self.register_buffer("neighbour_index", torch.from_numpy(neighbour_cells(size)), persistent=False)
        self.register_buffer("self_index", itself, persistent=False)

    def shrink_reward_output(self) -> None:
        """Scale the reward map's output layer to 5% and zero its bias (its initialisation; call it again
        after re-initialising the layers, as SB3's PPO policy does with orthogonal weights)."""
        last = self.reward_conv[2]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        with torch.no_grad():
            last.weight.mul_(0.05)
            last.bias.zero_()

    def reward_map(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-cell reward in ``[-floor, 0]``: about 0 at goal-like cells, about ``-floor`` elsewhere.

        :param obs: float observations ``(B, 6, N, N)``.
        """
        return -self.floor * (1.0 - torch.sigmoid(self.reward_logits(obs)))

    def reward_logits(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-cell logits ``(B, 1, N, N)`` of the reward map: how goal-like each cell is.

        :param obs: float observations ``(B, 6, N, N)``.
        """
        goal = obs[:, GOAL_CHANNEL : GOAL_CHANNEL + 1]
        if self.agent_blind:
            obs = self._without_agent(obs)
        logits: torch.Tensor = self.goal_weight * goal + self.goal_bias + self.reward_conv(obs)
        return logits

    def _without_agent(self, obs: torch.Tensor) -> torch.Tensor:
        """The observations with the agent channel zeroed (what an agent-blind reward map sees)."""
        mask: torch.Tensor = self.channel_mask  # type: ignore[assignment]
        return obs * mask

    def _neighbours(self, values: torch.Tensor) -> torch.Tensor:
        # Channel order follows rl_maze.observation.ACTIONS: up, right, down, left; zero outside the maze.
        kernels: torch.Tensor = self.neighbour_kernels  # type: ignore[assignment]
        return F.conv2d(values, kernels, padding=1)

    def _move_index(self, passages: torch.Tensor) -> torch.Tensor:
        """Per sample, the flat cell each move reads from: the neighbour through an open passage, else
        the cell itself. Shape ``(B, 4 * N * N)``.

        Reading the cell itself for a closed passage replaces the old "neighbour minus a wall penalty":
        both candidates always lose the max (values only grow sweep to sweep, so ``v(s) - step_cost`` is
        below ``v(s)``), so values and gradients are unchanged, and a sweep needs no penalty tensor.
        """
        neighbours: torch.Tensor = self.neighbour_index  # type: ignore[assignment]
        itself: torch.Tensor = self.self_index  # type: ignore[assignment]
        open_ = passages.flatten(2) > 0.5
        return torch.where(open_, neighbours, itself).flatten(1)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """Features at the agent: planned, or for a frozen planner on CPU looked up in ``memo`` when seen.

        An agent-blind frozen planner looks up the value map of each maze (the observation with its agent
        channel zeroed) and reads out the features at the agent: every position in a maze after the
        first is one read-out, not a plan. Otherwise the memo holds the features of each observation.

        :param observations: float observations ``(B, 6, N, N)`` with 0/1 entries.
        """
        parameters = list(self.parameters())
        frozen = not any(parameter.requires_grad for parameter in parameters)
        on_cpu = observations.device.type == "cpu"
        float32 = observations.dtype == self.raw_step_cost.dtype == torch.float32
        if frozen and on_cpu and float32 and not observations.requires_grad and not _exporting():
            weights = self._weights(parameters)
            if self.agent_blind:
                values = self.memo.features(weights, self._without_agent(observations), self.value_map)
                return self._read_out(values, observations)
            return self.memo.features(weights, observations, self.plan)
        return self.plan(observations)

    def _weights(self, parameters: list[nn.Parameter]) -> bytes:
        """Everything the features depend on besides the observation, as bytes (the memo's validity)."""
        parts = [parameter.detach().cpu().numpy().tobytes() for parameter in parameters]
        return b"".join(parts) + self.sweeps.to_bytes(4, "little")

    def _learns(self) -> bool:
        """Whether any of the planner's own weights train (a frozen planner's don't)."""
        return any(parameter.requires_grad for parameter in self.parameters())

    def values_are_goal_distances(self) -> bool:
        """Whether the value map is the goal's reward less a step cost per move to the goal, on perfect
        mazes (frozen and agent-blind): what lets the export read it off the maze's tree."""
        return self.agent_blind and not self._learns()

    def _step_cost(self) -> torch.Tensor:
        return F.softplus(self.raw_step_cost) + 1e-3

    def plan(self, observations: torch.Tensor) -> torch.Tensor:
        """Plan and read out features at the agent (always computed; ``forward`` may look them up).

        :param observations: float observations ``(B, 6, N, N)`` with 0/1 entries.
        """
        return self._read_out(self.value_map(observations), observations)

    def value_map(self, observations: torch.Tensor) -> torch.Tensor:
        """The value map after the sweeps, flat ``(B, N * N)`` (always computed).

        :param observations: float observations ``(B, 6, N, N)`` with 0/1 entries.
        """
        passages = observations[:, :4]
        step_cost = self._step_cost()
        reward = self.reward_map(observations).flatten(1)
        if self.reward_model:
            # The reward map is the reward model's alone (rl_maze.reward_model); RL trains the step cost
            # and the heads. RL's own gradients raised the reward of cells along the maze's bottom row
            # (the goal is always bottom right) until they became value sources: a run at 100% of
            # held-out mazes fell to 9% within 50k steps (issue 18, docs/learning.md).
            reward = reward.detach()
        # Value never crosses a wall: a closed passage reads the cell itself (see _move_index).
        move_index = self._move_index(passages)
        if torch.jit.is_tracing() and self.tree_export and self.values_are_goal_distances():
            # The ONNX export of a frozen planner: on the service's perfect mazes its fixed point is the
            # goal's reward less a step cost per move to the goal, and the moves are read off the maze's
            # tree in ~11 rounds of gathers instead of K sweeps (rl_maze.tree_distances; the export is
            # verified against the sweeps and falls back to them).
            size = math.isqrt(self.cells)  # a Python int: a traced shape would be recorded as ops
            goal = observations[:, GOAL_CHANNEL].flatten(1).argmax(dim=1)
            next_candidates, reverse = tour_tables(size)
            depth = goal_distances(passages, goal, next_candidates, reverse, jump_rounds(size))
            values = reward.gather(1, goal.unsqueeze(1)) - step_cost * depth
        elif torch.jit.is_tracing():  # the ONNX export: a fixed trip count, as one Loop node
            values = scripted_sweeps()(reward, reward, move_index, step_cost, self.sweeps, self.cells)
        elif _exporting():  # torch.compile: all sweeps, a fixed trip count
            values = run_sweeps(reward, reward, move_index, step_cost, self.sweeps, self.cells)
        elif not (reward.requires_grad or step_cost.requires_grad):
            # Nothing to differentiate (a frozen planner, or no_grad): all K sweeps may stop early. The
            # same values as below: once converged the last sweeps change nothing.
            values = settle(reward, move_index, step_cost, self.sweeps, self.cells)
        else:
            # Differentiated through each cell's value source, however far: exact and cheaper than
            # backpropagating through the sweeps (rl_maze.value_iteration.differentiable_values).
            values = differentiable_values(reward, move_index, step_cost, self.sweeps, self.cells)
        return values

    def _read_out(self, values: torch.Tensor, observations: torch.Tensor) -> torch.Tensor:
        """The features at the agent from a flat value map ``(B, N * N)``: 4 value differences to the
        neighbours (in step costs, clipped), 4 passage bits, the own value over the floor."""
        passages = observations[:, :4]
        agent = observations[:, AGENT_CHANNEL : AGENT_CHANNEL + 1]
        step_cost = self._step_cost()
        values = values.view_as(agent)
        own = (values * agent).sum(dim=(2, 3))
        around = (self._neighbours(values) * agent).sum(dim=(2, 3))
        gated = around - 4.0 * self.floor * (1.0 - (passages * agent).sum(dim=(2, 3)))
        diffs = torch.clamp((gated - own) / step_cost, -_DIFF_CLIP, _DIFF_CLIP)
        open_here = (passages * agent).sum(dim=(2, 3))
        return torch.cat((diffs, open_here, own / self.floor), dim=1)


class ActionSharedQHead(nn.Module):
    """Q-value head that scores every action with one shared MLP over that action's planner features.

    An ordinary head has to learn the same rule ("prefer the direction whose value is higher") once per
    action and per neighbourhood pattern; DQN with such a head got stuck at junctions it had seen rarely
    (measured). Sharing the rule across the four directions makes it one small function to learn.
    """

    def __init__(self, hidden: int = 32) -> None:
        """Build the head.

        :param hidden: width of the shared MLP.
        """
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Q-values ``(B, 4)`` from planner features ``(B, 9)``.

        :param features: output of ``MazePlannerExtractor``.
        """
        own = features[:, 8:9].expand(-1, 4)
        per_action = torch.stack((features[:, :4], features[:, 4:8], own), dim=2)
        return self.mlp(per_action).squeeze(-1)


class MazeDQNPolicy(DQNPolicy):
    """DQN policy: ``MazePlannerExtractor`` followed by ``ActionSharedQHead`` (``net_arch`` is then unused).

    With any other feature extractor (a user override) it is SB3's ordinary Q-network.
    """

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        # The target network's frozen planner has the online one's weights: one memo serves both (each
        # memo entry is checked against the weights it was planned with).
        online, target = self.q_net.features_extractor, self.q_net_target.features_extractor
        if isinstance(online, MazePlannerExtractor) and isinstance(target, MazePlannerExtractor):
            target.memo = online.memo

    def make_q_net(self) -> QNetwork:
        """Build a Q-network (online or target) with the shared-action head."""
        q_net = super().make_q_net()
        if isinstance(q_net.features_extractor, MazePlannerExtractor):
            q_net.q_net = nn.Sequential(ActionSharedQHead()).to(self.device)
        return q_net
