"""The transformer pool's last block computes the CLS token alone."""

import torch

from cellbag.aggregate.heads.transformer import Block, TransformerPool
from cellbag.core.mil import pad_bags


def test_cls_only_block_equals_the_full_block_at_token_zero():
    torch.manual_seed(0)
    block = Block(width=8, heads=2).eval()
    x, mask = pad_bags([torch.randn(4, 8), torch.randn(9, 8), torch.randn(1, 8)])
    full = block(x, mask)
    cls = block(x, mask, cls_only=True)
    assert cls.shape == (3, 1, 8)
    torch.testing.assert_close(cls[:, 0], full[:, 0], rtol=1e-5, atol=1e-6)
    # padded tokens never reach the CLS token
    x2 = x.clone()
    x2[~mask] = 1e3
    torch.testing.assert_close(block(x2, mask, cls_only=True), cls, rtol=1e-5, atol=1e-6)


def test_two_layer_pool_reads_the_same_cls_as_running_every_token():
    torch.manual_seed(1)
    pool = TransformerPool(dim=5, width=8, heads=2, layers=2, dropout=0.0).eval()
    x, mask = pad_bags([torch.randn(3, 5), torch.randn(7, 5)])
    logits, weights = pool(x, mask, return_weights=True)
    # the same network with every block over all tokens
    b = mask.shape[0]
    h = torch.cat([pool.cls.expand(b, -1, -1), pool.embed(x) * mask[..., None]], dim=1)
    m = torch.cat([torch.ones(b, 1, dtype=torch.bool), mask], dim=1)
    for block in pool.blocks:
        h = block(h, m)
    want = pool.classifier(pool.norm(h[:, 0]))
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(weights.sum(1), torch.ones(2))
