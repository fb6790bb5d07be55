"""prunekit's built-in strategies, one file each; importing this package registers them all."""
from . import (  # noqa: F401
    global_activation,
    global_scaled_oneshot,
    global_unscaled,
    local_l1,
    tina,
    vanilla_l1,
)
