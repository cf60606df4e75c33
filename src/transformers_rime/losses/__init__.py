"""RIME's training losses: pure functions with thin `nn.Module` wrappers.

- [`info_nce`]: in-batch (+ hard) negatives InfoNCE, symmetric, optionally gathered across processes.
- [`cross_mode_alignment`]: CMA, InfoNCE between a query in one mode and documents in the other.
- [`rime_contrastive_loss`]: the weighted stage-1 objective (LM + NCE per mode + CMA) over [`ModeEmbeddings`].
- [`gather_with_grad`]: the cross-process gather the contrastive terms use.

The language-modelling loss on the rewrite is computed by [`RimeForEmbedding.forward`] from `labels`.
"""

from .cross_mode_alignment import CrossModeAlignmentLoss, cross_mode_alignment, same_input_alignment
from .distributed import gather_with_grad, is_distributed
from .info_nce import InfoNCELoss, info_nce
from .rime_contrastive import ModeEmbeddings, rime_contrastive_loss


__all__ = [
    "CrossModeAlignmentLoss",
    "InfoNCELoss",
    "ModeEmbeddings",
    "cross_mode_alignment",
    "gather_with_grad",
    "info_nce",
    "is_distributed",
    "rime_contrastive_loss",
    "same_input_alignment",
]
