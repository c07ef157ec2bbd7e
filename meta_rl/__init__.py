"""meta-rl: meta-reinforcement learning on parameterized Gymnasium task families."""

import meta_rl_envs  # noqa: F401  (registers the MetaRL/... ids)

__version__ = "0.1.0"
