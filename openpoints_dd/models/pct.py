"""PCT (Point Cloud Transformer) classifier built from openpoints' own PCT blocks, registered in MODELS.

openpoints 0.1.2 ships `openpoints.models.backbone.pct.Pct`, but it is not registered and its forward
does not run (it unpacks two values from `SubsampleGroup`, which returns four). `PCTClassifier` reuses
the upstream layers and parameter names and supplies a working forward plus openpoints' classifier API.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from openpoints.loss import build_criterion_from_cfg
from openpoints.models.backbone.pct import Pct
from openpoints.models.build import MODELS
from openpoints.models.layers import furthest_point_sample

from ..compat.channels_last import neighbour_embedding


@MODELS.register_module()
class PCTClassifier(Pct):
    """PCT with neighbour embedding (Guo et al., "PCT: Point Cloud Transformer", CVM 2021, Fig. 2 and Sec. 3.4).

    Two point-wise convolutions (64, 64), two sample-and-group stages (FPS to 512 then 256 centres, 32
    nearest neighbours each, features `[f_j - f_i, f_i]` as in the reference code's `sample_and_group`,
    shared MLP and max over the neighbours), four offset-attention layers of 256 channels (Eq. 8-9), a
    1024-d fused feature, max-pooling and a 512-256-K head with dropout. The layers and parameter names
    are openpoints' (`Pct`); only the forward pass is ours. openpoints' `SA_Layer.forward` feeds the
    attention output `x_r` itself to the output projection; we feed the offset `x - x_r`, as the paper
    and the reference code (Strawberry-Eat-Mango/PCT_Pytorch) do.

    Args:
        num_classes: K, number of output logits. Default 40.
        in_channels: input channels per point; the first 3 of `x` must be xyz. Default 3.
        dropout: dropout probability of the two hidden head layers. Default 0.5.
        criterion_args: openpoints criterion cfg used by `get_logits_loss`; default plain cross-entropy.
        centres: FPS centres of the two neighbour-embedding stages. Default (512, 256), the paper's for 1024
            input points; scale them with the input (e.g. (128, 64) for 256 points): more centres than points
            would only repeat points at full cost.

    Raises:
        ValueError: if `in_channels` < 3, `dropout` is outside [0, 1) or `centres` is not two decreasing
            positive counts; in forward, if the input has fewer points than the first stage's centres.
    """

    def __init__(self, *, num_classes: int = 40, in_channels: int = 3, dropout: float = 0.5,
                 criterion_args: Mapping[str, Any] | None = None, centres: Sequence[int] = (512, 256)):
        if in_channels < 3:
            raise ValueError(f'PCTClassifier: in_channels must be >= 3 (xyz first), got {in_channels}')
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f'PCTClassifier: dropout must be in [0, 1), got {dropout}')
        centres = [int(c) for c in centres]
        if len(centres) != 2 or not 0 < centres[1] <= centres[0]:
            raise ValueError(f'PCTClassifier: centres must be two counts, first >= second > 0, got {centres}')
        super().__init__(output_channels=num_classes, dropout=dropout)
        self.subsample1.num_groups, self.subsample2.num_groups = centres
        if in_channels != 3:
            self.conv1 = nn.Conv1d(in_channels, 64, kernel_size=1, bias=False)
        self.num_classes, self.in_channels, self.dropout = num_classes, in_channels, dropout
        criterion_args = {'NAME': 'CrossEntropy'} if criterion_args is None else dict(criterion_args)
        self.criterion = build_criterion_from_cfg(criterion_args)

    def forward(self, data: Tensor | Mapping[str, Tensor], x: Tensor | None = None) -> Tensor:
        """Logits (B, K).

        Args:
            data: an openpoints batch dict with `pos` (B, N, 3) and optionally `x` (B, C, N), or a
                (B, N, 3) tensor of points (then `x` is taken as the points' xyz unless given).
            x: (B, C, N) features when `data` is a tensor. Default None.

        Raises:
            ValueError: if the shapes do not match the above.
        """
        pos, x = _pos_and_features(data, x, self.in_channels)
        B, N = pos.shape[:2]
        if N < self.subsample1.num_groups:
            raise ValueError(f'PCTClassifier: {N} input points but {self.subsample1.num_groups} FPS centres in the '
                             f'first stage; set model.centres for this point count (e.g. [{N // 2}, {N // 4}])')
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        center, h = _neighbour_embedding(self.subsample1, self.gather_local_0, pos, h)   # (B, 128, centres[0])
        center, h = _neighbour_embedding(self.subsample2, self.gather_local_1, center, h)  # (B, 256, centres[1])
        h = self.conv_fuse(torch.cat([_attention_stack(self.pt_last, h), h], dim=1))  # (B, 1024, centres[1])
        h = F.adaptive_max_pool1d(h, 1).view(B, -1)
        h = self.dp1(F.leaky_relu(self.bn6(self.linear1(h)), negative_slope=0.2))
        h = self.dp2(F.leaky_relu(self.bn7(self.linear2(h)), negative_slope=0.2))
        return self.linear3(h)

    def get_logits_loss(self, data: Mapping[str, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (B, K), scalar loss) for labels `target` (B,), as openpoints' classifiers return."""
        logits = self.forward(data)
        return logits, self.criterion(logits, target.long())

    def extra_repr(self) -> str:
        return (f'num_classes={self.num_classes}, in_channels={self.in_channels}, dropout={self.dropout}, '
                f'centres={[self.subsample1.num_groups, self.subsample2.num_groups]}')


def _pos_and_features(data: Tensor | Mapping[str, Tensor], x: Tensor | None,
                      in_channels: int) -> tuple[Tensor, Tensor]:
    """(pos (B, N, 3) contiguous, x (B, in_channels, N)) from a batch dict or a point tensor."""
    if not torch.is_tensor(data):
        pos, x = data['pos'], data.get('x')
    else:
        pos = data
    if pos.dim() != 3 or pos.shape[-1] != 3:
        raise ValueError(f'PCTClassifier: pos must be (B, N, 3), got {tuple(pos.shape)}. '
                         f'Did you pass features in (B, C, N)?')
    if x is None:
        x = pos.transpose(1, 2)
    if x.dim() != 3 or x.shape[0] != pos.shape[0] or x.shape[2] != pos.shape[1] or x.shape[1] < in_channels:
        raise ValueError(f'PCTClassifier: x must be (B, >={in_channels}, N) = ({pos.shape[0]}, >={in_channels}, '
                         f'{pos.shape[1]}) for pos {tuple(pos.shape)}, got {tuple(x.shape)}')
    return pos.contiguous(), x[:, :in_channels]


def _neighbour_embedding(subsample_group: nn.Module, local_op: nn.Module, pos: Tensor,
                         features: Tensor) -> tuple[Tensor, Tensor]:
    """One PCT neighbour-embedding stage: FPS centres (B, M, 3) and their embedded features (B, C_out, M).

    The centres are `subsample_group`'s (openpoints `SubsampleGroup`: FPS, then its K nearest neighbours
    by `KNNGroup`'s search); `local_op` runs on `[f_j - f_i, f_i]` for every neighbour j of centre i
    (`channels_last.neighbour_embedding`: on CPU without building the grouped input).
    """
    centre_idx = furthest_point_sample(pos, subsample_group.num_groups).long()           # (B, M)
    centre = torch.gather(pos, 1, centre_idx.unsqueeze(-1).expand(-1, -1, 3))
    _, neighbour_idx = subsample_group.grouper.knn(pos, centre)                            # (B, M, K) int32
    return centre, neighbour_embedding(local_op, features, centre_idx, neighbour_idx)


def _attention_stack(block: nn.Module, x: Tensor) -> Tensor:
    """openpoints' `Point_Transformer_Last` with offset attention: (B, C, M) -> (B, 4C, M)."""
    x = F.relu(block.bn1(block.conv1(x)))
    x = F.relu(block.bn2(block.conv2(x)))
    outputs = []
    for layer in (block.sa1, block.sa2, block.sa3, block.sa4):
        x = _offset_attention(layer, x)
        outputs.append(x)
    return torch.cat(outputs, dim=1)


def _offset_attention(layer: nn.Module, x: Tensor) -> Tensor:
    """PCT offset-attention (paper Eq. 8-9) with the parameters of an openpoints `SA_Layer`: (B, C, M) -> same.

    Query and key share weights; the softmax runs over keys, then each key column is l1-normalised over
    the queries, and the output projection sees the offset `x - x_r`.
    """
    query = layer.q_conv(x).transpose(1, 2)                                  # (B, M, C/4)
    energy = torch.bmm(query, layer.k_conv(x))                               # (B, M, M)
    attention = energy.softmax(dim=-1)
    attention = attention / (1e-9 + attention.sum(dim=1, keepdim=True))
    attended = torch.bmm(layer.v_conv(x), attention)                         # (B, C, M)
    return x + layer.act(layer.after_norm(layer.trans_conv(x - attended)))
