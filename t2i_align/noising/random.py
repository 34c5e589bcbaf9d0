"""Random draws that do not depend on how a batch is split across processes.

A training step draws caption dropout, the VAE posterior sample, t, the noise and (InPO) the
inversion noise. With one torch.Generator per process, those draws depend on the process count
and on which rows a process holds, so a 2-process run cannot equal a 1-process run with the same
global batch. ``PerSampleGenerator`` gives every row its own stream, seeded by (run seed, step,
micro-batch, dataset index): the same pair gets the same randomness whatever the layout, and a
resumed run gets the same draws without restoring any generator state.

The functions ``randn`` / ``randint`` / ``rand`` accept either a ``torch.Generator`` (one stream
for the whole batch, as before) or a ``PerSampleGenerator``. With the latter, row j of a tensor of
N = k * n rows (n = number of samples; e.g. chosen rows then rejected rows, k = 2) comes from the
stream of sample j mod n, drawn in row order, so each stream advances the same way on any layout.
"""

from __future__ import annotations

import hashlib

import torch
from t2i_align.errors import InputError


def sample_seed(seed: int, step: int, micro: int, index: int) -> int:
    """A 63-bit seed for one sample's stream: a hash of (seed, step, micro-batch, dataset index)."""
    digest = hashlib.blake2b(f"t2i_align:{seed}:{step}:{micro}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class PerSampleGenerator:
    """One CPU torch.Generator per sample; draws are moved to ``device``. ``device`` mirrors
    torch.Generator.device so code written for a generator can ask where draws are made."""

    def __init__(self, seeds, device="cpu"):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device = torch.device("cpu")
        self.target_device = torch.device(device)

    @classmethod
    def for_batch(cls, seed: int, step: int, micro: int, indices, device="cpu") -> "PerSampleGenerator":
        return cls([sample_seed(seed, step, micro, int(i)) for i in indices], device)

    def __len__(self) -> int:
        return len(self.generators)

    def rows(self, num_rows: int):
        """The generator of each of `num_rows` rows (row j -> sample j mod n)."""
        n = len(self.generators)
        if n == 0 or num_rows % n:
            raise InputError(f"a per-sample draw of {num_rows} rows does not fit {n} samples "
                             "(rows must be a multiple of the number of samples)")
        return [self.generators[j % n] for j in range(num_rows)]


def randn(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal tensor of `shape` on `device`."""
    if isinstance(generator, PerSampleGenerator):
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in generator.rows(shape[0])]
        return torch.stack(rows).to(device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype,
                       device=generator.device if generator is not None else device).to(device)


def randint(high: int, num: int, generator, device) -> torch.Tensor:
    """Long tensor [num] uniform on {0, ..., high - 1}."""
    if isinstance(generator, PerSampleGenerator):
        return torch.cat([torch.randint(0, high, (1,), generator=g) for g in generator.rows(num)]).to(device)
    return torch.randint(0, high, (num,), generator=generator,
                         device=generator.device if generator is not None else device).to(device)


def rand(num: int, generator, device="cpu") -> torch.Tensor:
    """Float tensor [num] uniform on [0, 1)."""
    if isinstance(generator, PerSampleGenerator):
        return torch.cat([torch.rand((1,), generator=g) for g in generator.rows(num)]).to(device)
    return torch.rand((num,), generator=generator,
                      device=generator.device if generator is not None else device).to(device)
