#!/usr/bin/env python3
"""Reference outputs for tests/metrics/inception.cpp: torchvision's Inception-v3 and pytorch-fid's FID
Inception-v3, with random weights and randomized BatchNorm statistics, run on a few random images.

Usage: inception_torchvision.py OUT_DIR

Writes three safetensors files into OUT_DIR (written here with json + struct + numpy: an 8-byte
little-endian header length, a JSON header giving each tensor's dtype, shape and data_offsets within
the data that follows, then the raw little-endian data):
  torchvision.safetensors  the full state dict of torchvision.models.inception_v3(aux_logits=True),
                           AuxLogits.* and the I64 num_batches_tracked entries included, as PyTorch
                           stores them;
  fid.safetensors          the FID network's state dict (1008 classes, no AuxLogits) without the
                           num_batches_tracked entries (as a state dict written before PyTorch had them);
  outputs.safetensors      the input images and what the networks and F.interpolate give for them.

The FID network is built as pytorch-fid's fid_inception_v3 builds it (torchvision's network with the
Mixed_5b..5d, 6b..6e, 7b and 7c blocks replaced by subclasses of torchvision's blocks whose forward
differs only in the pooling in front of branch_pool); the subclasses are written below.
"""
import json
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import inception as tv_inception


def write_safetensors(path, tensors):
    """tensors: list of (name, numpy array of float32 or int64)."""
    header = {}
    chunks = []
    offset = 0
    for name, array in tensors:
        array = np.array(array, order="C")  # (np.ascontiguousarray would turn 0-d counts into 1-d)
        if array.dtype == np.float32:
            dtype = "F32"
        elif array.dtype == np.int64:
            dtype = "I64"
        else:
            raise ValueError(f"{name}: unsupported dtype {array.dtype}")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for chunk in chunks:
            f.write(chunk)


def state_dict_arrays(model, keep_batch_counts=True):
    out = []
    for name, t in model.state_dict().items():
        if name.endswith("num_batches_tracked") and not keep_batch_counts:
            continue
        out.append((name, t.detach().cpu().numpy()))
    return out


# pytorch-fid's patched blocks: TensorFlow's average pool leaves the zero padding out of the mean
# (count_include_pad=False); the last block max-pools instead.
class FIDBlockA(tv_inception.InceptionA):
    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b5, b3, pool], 1)


class FIDBlockC(tv_inception.InceptionC):
    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b7, d, pool], 1)


class FIDBlockE(tv_inception.InceptionE):
    def __init__(self, in_channels, max_pool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b3, d, self.branch_pool(pooled)], 1)


def fid_inception():
    # As pytorch-fid's _inception_v3: init_weights=False (PyTorch's default layer initialisation).
    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False,
                                          transform_input=False)
    net.Mixed_5b = FIDBlockA(192, pool_features=32)
    net.Mixed_5c = FIDBlockA(256, pool_features=64)
    net.Mixed_5d = FIDBlockA(288, pool_features=64)
    net.Mixed_6b = FIDBlockC(768, channels_7x7=128)
    net.Mixed_6c = FIDBlockC(768, channels_7x7=160)
    net.Mixed_6d = FIDBlockC(768, channels_7x7=160)
    net.Mixed_6e = FIDBlockC(768, channels_7x7=192)
    net.Mixed_7b = FIDBlockE(1280, max_pool=False)
    net.Mixed_7c = FIDBlockE(2048, max_pool=True)
    return net


def preprocess(images, resize=True, normalize=True):
    """pytorch-fid's InceptionV3.forward preprocessing (gray repeated to three channels first)."""
    x = images if images.shape[1] == 3 else images.repeat(1, 3, 1, 1)
    if resize:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    if normalize:
        x = 2 * x - 1
    return x


def randomize_batch_norms(net, generator, batch_count):
    """Gives every BatchNorm random affine parameters and running statistics that matter but keep the
    activations of order one through the depth: in one eval-mode pass over a calibration batch, each
    BatchNorm's running mean and variance are set, just before it runs, from the statistics of the input it
    receives (so upstream changes do not compound), then perturbed by a random fraction of a standard
    deviation and a random factor."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    def calibrate(bn, inputs):
        x = inputs[0]
        c = bn.num_features
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
        bn.running_mean.copy_(mean + 0.2 * var.sqrt() * torch.randn(c, generator=generator))
        bn.running_var.copy_(var * torch.exp(0.3 * torch.randn(c, generator=generator)))

    with torch.no_grad():
        for bn in bns:
            c = bn.num_features
            bn.weight.copy_(0.7 + 0.6 * torch.rand(c, generator=generator))
            bn.bias.copy_(0.2 * torch.randn(c, generator=generator))
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=generator))  # kept where no input reaches
            bn.running_var.copy_(0.5 + torch.rand(c, generator=generator))    # (the auxiliary classifier)
            bn.num_batches_tracked.fill_(batch_count)
        hooks = [bn.register_forward_pre_hook(calibrate) for bn in bns]
        net.eval()
        net(preprocess(torch.rand(2, 3, 37, 53, generator=generator)))
        for hook in hooks:
            hook.remove()


def run(net, x):
    """(pool features [N, 2048], logits) of the eval-mode network."""
    captured = {}
    hook = net.avgpool.register_forward_hook(lambda module, inputs, output: captured.update(f=torch.flatten(output, 1)))
    with torch.no_grad():
        logits = net(x)
    hook.remove()
    return captured["f"], logits


def main():
    out_dir = sys.argv[1]
    torch.manual_seed(20240611)
    torch.set_num_threads(2)
    generator = torch.Generator().manual_seed(7)

    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=False)
    randomize_batch_norms(tv, generator, 12345)
    fid = fid_inception()
    randomize_batch_norms(fid, generator, 678)

    images = torch.rand(2, 3, 37, 53, generator=generator)  # resized to 299x299 by the preprocessing
    gray = torch.rand(2, 1, 80, 96, generator=generator)    # fed at its own size
    outputs = [("images", images), ("gray", gray)]

    for prefix, net in (("torchvision", tv), ("fid", fid)):
        features, logits = run(net, preprocess(images))
        outputs += [(prefix + ".features", features), (prefix + ".logits", logits)]
    # torchvision's transform_input on top of pytorch-fid's 2x - 1, without resizing.
    tv.transform_input = True
    features, logits = run(tv, preprocess(gray, resize=False))
    tv.transform_input = False
    outputs += [("torchvision_transform.features", features), ("torchvision_transform.logits", logits)]
    features, _ = run(fid, preprocess(gray, resize=False, normalize=False))
    outputs += [("fid_raw.features", features)]

    # The resize alone: F.interpolate(bilinear, align_corners=False), up and down.
    small = torch.rand(2, 2, 13, 17, generator=generator)
    outputs += [("resize.input", small),
                ("resize.up", F.interpolate(small, size=(29, 31), mode="bilinear", align_corners=False)),
                ("resize.down", F.interpolate(small, size=(5, 7), mode="bilinear", align_corners=False)),
                ("resize.mixed", F.interpolate(small, size=(40, 6), mode="bilinear", align_corners=False))]
    tiny = torch.rand(1, 3, 7, 5, generator=generator)
    big_gray = torch.rand(1, 1, 331, 401, generator=generator)
    outputs += [("tiny", tiny), ("tiny.preprocessed", preprocess(tiny)),
                ("big_gray", big_gray), ("big_gray.preprocessed", preprocess(big_gray))]

    write_safetensors(f"{out_dir}/torchvision.safetensors", state_dict_arrays(tv))
    write_safetensors(f"{out_dir}/fid.safetensors", state_dict_arrays(fid, keep_batch_counts=False))
    write_safetensors(f"{out_dir}/outputs.safetensors",
                      [(name, t.detach().contiguous().numpy().astype(np.float32)) for name, t in outputs])


if __name__ == "__main__":
    main()
