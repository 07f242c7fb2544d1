"""The end of every dataset item in openpoints' classification layout."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch


def finish_item(data: dict[str, Any], transform: Callable[[dict], dict] | None) -> dict[str, Any]:
    """Apply the YAML's transform chain, make `pos` a tensor, and set openpoints' features `x`: the points, with
    the heights appended when a transform (PointCloudCenterAndNormalize) added them, as openpoints' own datasets do."""
    if transform is not None:
        data = transform(data)
    if not torch.is_tensor(data['pos']):
        data['pos'] = torch.from_numpy(np.ascontiguousarray(data['pos']))
    data['x'] = torch.cat((data['pos'], data['heights']), 1) if 'heights' in data else data['pos']
    return data
