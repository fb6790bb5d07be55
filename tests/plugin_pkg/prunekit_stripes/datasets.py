"""``stripes``: 600 noisy images, 3 classes, the class is which third of the image holds a bright band."""
import torch
from torch.utils.data import TensorDataset

from prunekit.data.datasets import DataBundle, register_dataset


@register_dataset("stripes", num_classes=3, offline=True, description="600 noisy images; the class is the bright band")
def load_stripes(cfg, img_size, mean, std, seed, in_chans):
    """Train / validation split by ``cfg.val_fraction``, normalised with the backbone's ``mean`` / ``std``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(600) % 3
    x = 0.5 * torch.rand(600, 1, img_size, img_size, generator=g)
    band = img_size // 3
    for k in range(3):
        x[labels == k, :, k * band:(k + 1) * band, :] += 0.5
    x = x.expand(-1, in_chans, -1, -1)
    x = (x - torch.tensor(mean[:in_chans]).view(1, -1, 1, 1)) / torch.tensor(std[:in_chans]).view(1, -1, 1, 1)
    order = torch.randperm(600, generator=g)
    val, train = order[:round(600 * cfg.val_fraction)], order[round(600 * cfg.val_fraction):]
    return DataBundle("stripes", TensorDataset(x[train], labels[train]), TensorDataset(x[val], labels[val]), 3)
