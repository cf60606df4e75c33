"""Turn what users pass to `RimeEncoder.encode` into normalised items, with errors that name the item.

The implementation lives in `transformers_rime.models.rime.inputs_rime`, which ships to the Hub with the model so
that exported directories parse inputs exactly as this package does; this module is its public home.
"""

from .models.rime.inputs_rime import *  # noqa: F403
from .models.rime.inputs_rime import __all__  # noqa: F401
