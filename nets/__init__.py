"""Deep networks read as ODE schemes: architectures, datasets (``nets.datasets``) and training
(``nets.training``).

Models are built by name through the registry (``nets.registry``); architecture modules register
themselves at import, so they are imported here.
"""

from nets import fractalnet, odenet, polynet, resnet, revnet  # noqa: E402,F401  (registers the models)
from nets.registry import available_models, build_model, register_model

__all__ = ["available_models", "build_model", "register_model"]
