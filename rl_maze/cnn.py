"""A small convolutional feature extractor for maze grids (the ``cnn`` policy choice), installable with
the package so that a ``model.zip`` trained with it loads outside the service's checkout."""

from __future__ import annotations

import gymnasium
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class MazeCNN(BaseFeaturesExtractor):
    """NatureCNN-style extractor for small grids: three 3x3 convolutions (32, 64, 64 channels, padding 1,
    so a 2x2 maze works too), flattened, one linear layer to ``features_dim``."""

    def __init__(self, observation_space: gymnasium.spaces.Box, features_dim: int = 256) -> None:
        """Build the extractor.

        :param observation_space: the env's observation space, shape ``(C, N, N)``.
        :param features_dim: size of the output features.
        """
        super().__init__(observation_space, features_dim)
        channels, height, width = (int(d) for d in observation_space.shape)
        self.cnn = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.linear = nn.Sequential(nn.Linear(64 * height * width, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """Features ``(B, features_dim)`` from float observations ``(B, C, N, N)``.

        :param observations: observations as SB3 preprocesses them (cast to float).
        """
        return self.linear(self.cnn(observations))
