"""The policy networks a run can choose (its ``policy``): what each is given, what it learns, its SB3 kwargs.

- ``planner`` (default): ``MazePlannerExtractor`` with the hand-set prior (the goal cell is the value
  source, step cost 1) kept frozen: its value-iteration features already point along shortest paths in
  an untrained model; RL learns only the small heads that turn them into moves (and PPO's value head).
- ``planner_learned``: the same network with a random reward map and step cost, all of it trained (PPO and
  DQN): planning learned from reward alone.
- ``cnn``: ``MazeCNN``, a small convolutional extractor in the style of SB3's ``NatureCNN`` but sized for
  grids of 2-30 cells (3x3 convolutions at full resolution instead of 8x8/4x4 strides), then SB3's heads.
- ``mlp``: SB3's default MLP over the flattened observation (the baseline).

Every choice sees the same observation (the ``(6, N, N)`` passage bits, agent and goal) and nothing else.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from rl_maze.cnn import MazeCNN
from rl_maze.planner import MazePlannerExtractor

__all__ = ["DEFAULT_POLICY", "POLICIES", "MazeCNN", "PolicyName", "check_policy", "policy_kwargs"]

PolicyName = Literal["planner", "planner_learned", "cnn", "mlp"]
POLICIES: tuple[str, ...] = get_args(PolicyName)
DEFAULT_POLICY: PolicyName = "planner"


def check_policy(policy: str) -> None:
    """Raise ``ValueError`` unless ``policy`` is one of ``POLICIES``.

    :param policy: the policy's name.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


def policy_kwargs(policy: str, algorithm: str) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` (feature extractor and head sizes) for a policy choice and algorithm.

    :param policy: one of ``POLICIES``.
    :param algorithm: ``"PPO"`` or ``"DQN"``.
    """
    check_policy(policy)
    ppo = algorithm == "PPO"
    if policy in ("planner", "planner_learned"):
        learned = policy == "planner_learned"
        return {
            "features_extractor_class": MazePlannerExtractor,
            # The prior stays as set, for PPO as for DQN: trained, it drifted off the goal (DQN: see
            # agents.hyperparameters; PPO: issue 18 and bench/RESULTS.md "Planner stability").
            # The reward map does not see the agent: the value map is one per maze (the frozen planner
            # plans it once and reads every position from it, rl_maze.planner). The learned one also
            # learns a reward model (rl_maze.reward_model) next to RL: without it, it found a source a few
            # cells off the goal and kept it, or lost a good map again (issue 18, docs/learning.md).
            "features_extractor_kwargs": {
                "prior": not learned,
                "learn_planner": learned,
                "agent_blind": True,
                "reward_model": learned,
            },
            # DQN's head is ActionSharedQHead (MazeDQNPolicy), which ignores net_arch.
            "net_arch": {"pi": [32], "vf": [64]} if ppo else [],
        }
    if policy == "cnn":
        return {"features_extractor_class": MazeCNN, "net_arch": {"pi": [64], "vf": [64]} if ppo else [64]}
    return {}  # mlp: SB3's FlattenExtractor and default net_arch (64, 64)
