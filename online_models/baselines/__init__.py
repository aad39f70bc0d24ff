"""Baselines the multi-task net is measured against, on the same Learner protocol.

- :class:`~online_models.baselines.river_lr.RiverFunnelLR` (``"river_lr"``):
  one River logistic regression per funnel step on hashed one-hot features.
- :class:`~online_models.baselines.vw.VWFunnel` (``"vw"``): one Vowpal Wabbit
  logistic regression per funnel step, with user x item-side crosses.
- :class:`~online_models.baselines.popularity.Popularity` (``"popularity"``):
  decayed per-item funnel rates with a category fallback.

Example
-------
>>> from online_models.baselines import Popularity, RiverFunnelLR, VWFunnel
>>> sorted(m.name for m in (Popularity(), RiverFunnelLR(), VWFunnel()))
['popularity', 'river_lr', 'vw']
"""

from online_models.baselines.popularity import Popularity, PopularityConfig
from online_models.baselines.river_lr import RiverFunnelLR, RiverLRConfig
from online_models.baselines.vw import VWConfig, VWFunnel

__all__ = [
    "Popularity",
    "PopularityConfig",
    "RiverFunnelLR",
    "RiverLRConfig",
    "VWConfig",
    "VWFunnel",
]
