"""Reference models, data sets, a training loop and the demo: teaching and demo code.

Not the library core: the estimator, the tracker and the views do not import it. The
digits data set needs scikit-learn (``pip install "hessnb[demo]"``).
"""

from hessnb.reference import data, models
from hessnb.reference.training import train

__all__ = ["data", "models", "train"]
