"""The conv building blocks run channels-last on CPU without changing their values."""

import torch

import imcf.nn.conv as conv
from imcf.nn.conv import ConvDecoder, ConvEncoder, cpu_layout


def test_cpu_layout_is_channels_last_for_image_batches_only():
    x = torch.randn(2, 3, 8, 8)
    assert cpu_layout(x).is_contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous(memory_format=torch.channels_last)  # the input is left as it was
    v = torch.randn(2, 3)
    assert cpu_layout(v) is v


def test_encoder_and_decoder_values_do_not_depend_on_the_layout(monkeypatch):
    torch.manual_seed(0)
    enc, dec = ConvEncoder(3, [8, 16], cond_dim=4), ConvDecoder([8, 16], cond_dim=4)
    x, cond = torch.randn(5, 3, 16, 16), torch.randn(5, 4)
    fast = enc(x, cond)[-1]
    out_fast = dec(fast, cond)
    assert out_fast.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(conv, "cpu_layout", lambda t: t.contiguous())
    plain = enc(x, cond)[-1]
    out_plain = dec(plain, cond)
    assert out_plain.is_contiguous()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-5, atol=1e-5)
