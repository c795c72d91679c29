"""Classification heads. Each maps a pooled feature vector `[N, D]` to class scores `[N, K]`.

The Grad-CAM score of a class is its entry in these scores: the logit for the linear and MLP
heads, the negative Euclidean distance to the class prototype for the prototypical head.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearHead(nn.Module):
    kind = "linear"

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class MLPHead(nn.Module):
    kind = "mlp"

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class PrototypicalHead(nn.Module):
    """The authors' head: Linear(D -> 512), L2 normalisation, nearest class prototype.

    Prototypes are a buffer (saved with the model, exported as constants), set from labelled
    embeddings with `set_prototypes`; scores are negative Euclidean distances to them.
    """

    kind = "prototypical"

    def __init__(self, in_features: int, num_classes: int, embed_dim: int = 512) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim)
        # Random unit prototypes until the first episode sets real ones, so that an untrained
        # model already gives distinct, finite scores.
        g = torch.Generator().manual_seed(0)
        self.register_buffer(
            "prototypes", F.normalize(torch.randn(num_classes, embed_dim, generator=g), dim=1)
        )

    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(x), dim=1)

    def distances(self, emb: Tensor) -> Tensor:
        # torch.cdist has no ONNX translation; the explicit difference is exact and exports.
        sq = (emb.unsqueeze(1) - self.prototypes.unsqueeze(0)).pow(2).sum(-1)
        # The clamp keeps the gradient finite for an embedding sitting exactly on a prototype.
        return sq.clamp_min(1e-12).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        return -self.distances(self.embed(x))

    @torch.no_grad()
    def set_prototypes(self, embeddings: Tensor, labels: Tensor) -> None:
        """Set each class's prototype to the mean of its (already embedded) samples."""
        for k in range(self.prototypes.shape[0]):
            sel = labels == k
            if bool(sel.any()):
                self.prototypes[k] = embeddings[sel].mean(0)
