"""RQ-VAE (torch): MLP encoder -> residual VQ in a latent space -> MLP decoder.

Training: a few reconstruction-only warm-up epochs, k-means initialisation of each residual
codebook on the latents (psrq.clustering.kmeans: faiss, or torch on `device`), then joint training with the straight-through estimator,
the codebook loss ||sg(r) - e||² and the commitment loss beta·||r - sg(e)||². Seeded and
deterministic on CPU; defaults keep a fit to seconds on ~10k items.

torch's multi-threaded CPU kernels are not bit-reproducible across processes (we measured
different codes from two runs with 2 threads), so fit / encode / decode run under a fixed
thread count (`threads`, default 1), restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from psrq.base import F32, I64, Quantizer, check_codes, check_encode_input, check_fit_input, nearest
from psrq.clustering import kmeans
from psrq.kmeans_common import check_kmeans_backend


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    return [order[i : i + size] for i in range(0, n, size)]


class RQVAE(Quantizer):
    """Residual-quantized autoencoder; codes index the latent residual codebooks."""

    method = "rqvae"

    def __init__(
        self,
        codebook_sizes: Any,
        seed: int = 0,
        hidden: int = 256,
        latent_dim: int = 64,
        epochs: int = 15,
        warmup_epochs: int = 5,
        batch_size: int = 512,
        lr: float = 1e-3,
        beta: float = 0.25,
        threads: int = 1,
        device: str = "cpu",
        kmeans_backend: str = "auto",
    ) -> None:
        super().__init__(codebook_sizes, seed)
        check_kmeans_backend(device, kmeans_backend)
        # where the k-means initialisation runs (the networks train on the CPU); not in options()
        self.device, self.kmeans_backend = device, kmeans_backend
        self.hidden, self.latent_dim = int(hidden), int(latent_dim)
        self.epochs, self.warmup_epochs = int(epochs), int(warmup_epochs)
        self.batch_size, self.lr, self.beta = int(batch_size), float(lr), float(beta)
        self.threads = int(threads)
        self.encoder: nn.Sequential | None = None
        self.decoder: nn.Sequential | None = None
        self.codebooks: list[F32] = []

    def _build(self, dim: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.encoder = _mlp(dim, self.hidden, self.latent_dim)
            self.decoder = _mlp(self.latent_dim, self.hidden, dim)

    def _nets(self) -> tuple[nn.Sequential, nn.Sequential]:
        if self.encoder is None or self.decoder is None:
            raise RuntimeError("rqvae quantizer is not fitted")
        return self.encoder, self.decoder

    def fit(self, X: Any) -> RQVAE:
        with _torch_threads(self.threads):
            return self._fit(check_fit_input(X, self.codebook_sizes))

    def _fit(self, X: F32) -> RQVAE:
        self._build(X.shape[1])
        enc, dec = self._nets()
        data = torch.from_numpy(X)
        gen = torch.Generator().manual_seed(self.seed)
        params = list(enc.parameters()) + list(dec.parameters())
        opt = torch.optim.Adam(params, lr=self.lr)
        for _ in range(self.warmup_epochs):
            for idx in _batches(len(data), self.batch_size, gen):
                loss = nn.functional.mse_loss(dec(enc(data[idx])), data[idx])
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
        with torch.no_grad():
            R = enc(data).numpy().copy()
        self.codebooks = []
        for layer, k in enumerate(self.codebook_sizes):
            C = kmeans(np.ascontiguousarray(R), k, self.seed + layer, device=self.device, backend=self.kmeans_backend)
            self.codebooks.append(C)
            R -= C[nearest(R, C)]
        self._train_joint(data, params, gen, self.epochs)
        self._dim = X.shape[1]
        return self

    def tune_decoder(self, X: Any, epochs: int) -> RQVAE:
        """`epochs` epochs of the decoder alone on X's quantized latents (the encoder and the
        codebooks stay as they are, so the codes do not move): a warm refit's last step (psrq.warm)."""
        enc, dec = self._nets()
        X = check_encode_input(X, self.dim)
        with _torch_threads(self.threads):
            data = torch.from_numpy(X)
            z_q = torch.from_numpy(self._quantized(self.encode(X), self.num_layers))
            gen = torch.Generator().manual_seed(self.seed)
            opt = torch.optim.Adam(dec.parameters(), lr=self.lr)
            for _ in range(epochs):
                for idx in _batches(len(data), self.batch_size, gen):
                    loss = nn.functional.mse_loss(dec(z_q[idx]), data[idx])
                    opt.zero_grad()
                    loss.backward()  # type: ignore[no-untyped-call]
                    opt.step()
        return self

    def _train_joint(self, data: torch.Tensor, params: list[Any], gen: torch.Generator, epochs: int) -> None:
        """The networks and the codebooks trained together (straight-through, codebook and
        commitment losses) for `epochs`, from the current codebooks."""
        enc, dec = self._nets()
        books = [nn.Parameter(torch.from_numpy(C.copy())) for C in self.codebooks]
        opt = torch.optim.Adam(params + books, lr=self.lr)
        for _ in range(epochs):
            for idx in _batches(len(data), self.batch_size, gen):
                x = data[idx]
                z = enc(x)
                residual, quantized, aux = z, torch.zeros_like(z), z.new_zeros(())
                for book in books:
                    code = torch.cdist(residual.detach(), book.detach()).argmin(dim=1)
                    e = book[code]
                    aux = aux + ((residual.detach() - e) ** 2).mean() + self.beta * ((residual - e.detach()) ** 2).mean()
                    quantized = quantized + e
                    residual = residual - e.detach()
                z_q = z + (quantized - z).detach()  # straight-through
                loss = nn.functional.mse_loss(dec(z_q), x) + aux
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.codebooks = [b.detach().numpy().astype(np.float32, copy=True) for b in books]

    def _latent(self, X: F32) -> F32:
        enc, _ = self._nets()
        with torch.no_grad(), _torch_threads(self.threads):
            return np.ascontiguousarray(enc(torch.from_numpy(X)).numpy(), dtype=np.float32)

    def encode(self, X: Any) -> I64:
        R = self._latent(check_encode_input(X, self.dim)).copy()
        codes = np.empty((R.shape[0], self.num_layers), dtype=np.int64)
        for layer, C in enumerate(self.codebooks):
            codes[:, layer] = nearest(R, C)
            R -= C[codes[:, layer]]
        return codes

    def decode_prefix(self, codes: Any, layers: int) -> F32:
        codes = check_codes(codes, self.codebook_sizes)
        _, dec = self._nets()
        z = self._quantized(codes, layers)
        with torch.no_grad(), _torch_threads(self.threads):
            return np.ascontiguousarray(dec(torch.from_numpy(z)).numpy(), dtype=np.float32)

    def _quantized(self, codes: I64, layers: int) -> F32:
        """The quantized latents of `codes`: the sum of their first `layers` codebook rows."""
        z = np.zeros((codes.shape[0], self.latent_dim), dtype=np.float32)
        for layer in range(layers):
            z += self.codebooks[layer][codes[:, layer]]
        return z

    def options(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "hidden": self.hidden,
            "latent_dim": self.latent_dim,
            "epochs": self.epochs,
            "warmup_epochs": self.warmup_epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "beta": self.beta,
            "threads": self.threads,
        }

    def tensors(self) -> dict[str, F32]:
        enc, dec = self._nets()
        out = {f"layer{i}": C for i, C in enumerate(self.codebooks)}
        for prefix, net in (("encoder", enc), ("decoder", dec)):
            for name, value in net.state_dict().items():
                out[f"{prefix}.{name}"] = value.detach().numpy().astype(np.float32, copy=True)
        return out

    @classmethod
    def from_state(
        cls, tensors: dict[str, F32], options: dict[str, Any], dim: int, codebook_sizes: tuple[int, ...]
    ) -> RQVAE:
        q = cls(codebook_sizes, **options)
        q._build(dim)
        enc, dec = q._nets()
        for prefix, net in (("encoder", enc), ("decoder", dec)):
            state = {k[len(prefix) + 1 :]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith(prefix + ".")}
            net.load_state_dict(state)
        q.codebooks = [np.ascontiguousarray(tensors[f"layer{i}"], dtype=np.float32) for i in range(len(codebook_sizes))]
        q._dim = dim
        return q
