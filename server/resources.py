"""The loaded models as wire resources (``proto.wire.ModelInfo``): what both transports
answer to ListModels. (The session's answers are built by ``server.session``.)"""

from __future__ import annotations

import numpy as np

from proto.wire import ModelInfo, SensorSpec
from server.models import Model


def model_info(m: Model, default: bool) -> ModelInfo:
    man = m.manifest
    return ModelInfo(
        name=m.name, is_default=default, control_period_s=man.control_period,
        latent_size=man.latent_size, action_size=man.action_size,
        action_low=np.asarray(man.action_low, np.float32),
        action_high=np.asarray(man.action_high, np.float32),
        sensors=tuple(SensorSpec(s.name, s.kind, tuple(s.shape), str(s.dtype),
                                 s.kind == "vector" and m.bundle.has_decoder(s.name))
                      for s in man.sensors),
        code_version=man.code_version, manifest_sha256=m.digest,
        state_names=tuple(m.state_names))


def model_infos(models: dict[str, Model], default: str) -> list[ModelInfo]:
    """Every loaded model, ``default`` marked."""
    return [model_info(m, m.name == default) for m in models.values()]
