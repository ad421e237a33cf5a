"""The reward model of a learned planner: its reward map trained on which moves ended episodes at the goal.

Value iteration plans toward the cells its reward map marks, and the gradient of a max reaches only the
cell a value comes from: a cell that is not already a source, the goal included, gets none, however much
the policy needs it. Trained by RL alone, a randomly initialised ``planner_learned`` therefore often fixed
a source a few cells from the goal and never moved it (held-out success stuck at 1-5% for 500k steps),
or lost a good map again (100% to 9%). Here the reward map is a model of the environment's reward, fitted
to what the agent experienced: for every move through an open passage, whether it ended the episode with
the goal reward. The label is the environment's own signal (its termination at the goal), never the
observation's goal channel or a distance; the logits are those of the reward map the planner plans with
(a cell the model predicts pays the goal reward becomes a value source), and RL does not train them (the
planner detaches them: RL trains the step cost and the heads). The algorithms in ``rl_maze.algorithms``
take a few steps of this loss at each of their own updates (``RewardModelTrainer``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

from rl_maze.observation import AGENT_CHANNEL
from rl_maze.planner import MazePlannerExtractor

LEARNING_RATE: float = 1e-3
BATCH_SIZE: int = 512  # transitions per step
STEPS_PER_UPDATE: int = 4  # steps after each PPO update (DQN: one after each of its gradient steps)


def goal_reward_loss(
    extractor: MazePlannerExtractor,
    observations: torch.Tensor,
    actions: torch.Tensor,
    reached_goal: torch.Tensor,
) -> torch.Tensor | None:
    """Binary cross-entropy of the reward map's logit at each move's destination against whether the move
    ended the episode at the goal; moves into a wall are left out. The moves that reached the goal are
    rare (one per solved episode), so both kinds are averaged separately and weighted equally.

    :param extractor: a planner (its ``reward_logits``).
    :param observations: float observations ``(B, 6, N, N)`` before each move.
    :param actions: the moves ``(B,)``.
    :param reached_goal: ``(B,)`` bool: the environment ended the episode at the goal on this move.
    :return: the loss, or None when no move went through an open passage.
    """
    rows = torch.arange(len(observations), device=observations.device)
    actions = actions.reshape(-1).long()
    agent = observations[:, AGENT_CHANNEL].flatten(1).argmax(dim=1)
    open_ = observations[:, :4].flatten(2)[rows, actions, agent] > 0.5
    if not bool(open_.any()):
        return None
    neighbours: torch.Tensor = extractor.neighbour_index  # type: ignore[assignment]
    destination = neighbours[actions, agent]
    logits = extractor.reward_logits(observations).flatten(1)[rows, destination][open_]
    labels = reached_goal.reshape(-1).to(logits.dtype)[open_]
    losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    positive = labels > 0.5
    loss = logits.new_zeros(())
    for part in (positive, ~positive):
        if bool(part.any()):
            loss = loss + 0.5 * losses[part].mean()
    return loss


class RewardModelTrainer:
    """The reward model's own optimiser over the reward map's weights (the step cost is left to RL)."""

    def __init__(self, extractor: MazePlannerExtractor) -> None:
        """:param extractor: a planner built with ``reward_model`` and a trainable reward map."""
        self.extractor = extractor
        parameters = [extractor.goal_weight, extractor.goal_bias, *extractor.reward_conv.parameters()]
        self.optimizer = torch.optim.Adam(parameters, lr=LEARNING_RATE)

    @classmethod
    def for_extractor(cls, extractor: object) -> RewardModelTrainer | None:
        """A trainer when ``extractor`` is a planner that learns a reward model, else None."""
        if (
            isinstance(extractor, MazePlannerExtractor)
            and extractor.reward_model
            and extractor.goal_weight.requires_grad
        ):
            return cls(extractor)
        return None

    def step(
        self, observations: torch.Tensor, actions: torch.Tensor, reached_goal: torch.Tensor
    ) -> float | None:
        """One gradient step on these transitions; the loss before it (None: nothing to learn from).

        :param observations: observations ``(B, 6, N, N)`` before each move (any dtype).
        :param actions: the moves ``(B,)`` or ``(B, 1)``.
        :param reached_goal: ``(B,)`` or ``(B, 1)``: the move ended the episode at the goal.
        """
        loss = goal_reward_loss(self.extractor, observations.float(), actions, reached_goal.bool())
        if loss is None:
            return None
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float | None:
        """One ``step`` per batch of ``(observations, actions, reached_goal)``; their mean loss (None: no
        batch had a move to learn from)."""
        losses = [loss for batch in batches if (loss := self.step(*batch)) is not None]
        return sum(losses) / len(losses) if losses else None
