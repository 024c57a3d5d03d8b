"""Callbacks that track the Hessian spectrum inside training frameworks' loops.

- :mod:`hessnb.integrations.lightning`: ``HessianCallback`` for Lightning's ``Trainer``
  (``pip install "hessnb[lightning]"``);
- :mod:`hessnb.integrations.transformers`: ``HessianTrainerCallback`` for the Hugging Face
  ``Trainer`` (``pip install "hessnb[transformers]"``).

Importing this package imports neither framework; import the submodule you need.
:class:`ShardedBatches` gives each distributed rank its shard of the Hessian data.
"""

from hessnb.integrations.common import LazyTracker, ShardedBatches

__all__ = ["LazyTracker", "ShardedBatches"]
