"""The networks of GAN-INT-CLS (Reed et al. 2016), read top to bottom like the paper.

- `CharCnnRnn`: the character-level CNN-RNN text encoder φ(t) (Reed et al. 2016a, "Learning Deep
  Representations of Fine-Grained Visual Descriptions"): one-hot characters → three 1-D
  convolutions → recurrent layer averaged over valid time steps → linear to the embedding.
- `ImageEncoder`: a small CNN θ(v) trained jointly with φ so that φ(t)·θ(v) scores how well a
  caption describes an image (pretraining, R-precision, ranking camera frames).
- `Generator`: DCGAN generator G(z, φ(t)) — the embedding is projected to 128-d with leaky ReLU and
  concatenated to the noise, then a 1×1→4×4 transposed convolution and four stride-2 transposed
  convolutions up to 64×64×3 with tanh.
- `Discriminator`: D(x, φ(t)) — strided convolutions down to 4×4, the projected embedding
  replicated spatially and concatenated there, a 1×1 convolution, then a 4×4 convolution to a
  logit. `forward` also returns the joint 4×4 features (they have seen the text) for feature
  matching (Salimans et al. 2016).

Every config is a frozen dataclass; checkpoints store `dataclasses.asdict(config)` next to the
weights, and `*.from_dict` rebuilds the same network from a checkpoint alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from edge_runtime import tokenizer

C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any], where: str = "config") -> C:
    """Rebuild a frozen config dataclass, refusing unknown fields (lists become tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    # Fields a config saved before they existed lacks, with the value it was trained with.
    data = {**getattr(cls, "LEGACY_FIELDS", {}), **data}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


# --------------------------------------------------------------------------------------------
# Text encoder φ(t): char-CNN-RNN
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderConfig:
    """Reed's char-CNN-RNN; the defaults are the paper's."""

    alphabet_size: int = tokenizer.VOCAB_SIZE - 1
    """One-hot width: the tokenizer's 70 symbols (id 0, padding, is the all-zero vector)."""
    max_length: int = tokenizer.MAX_LENGTH
    """Characters per caption after padding (Reed: 201)."""
    conv_channels: tuple[int, int, int] = (384, 512, 512)
    kernel_size: int = 4
    pool_size: int = 3
    """Max-pool after the first two convolutions."""
    rnn: str = "lstm"
    """"lstm" (default) or "gru". Measured (onnxruntime 1.32, batch 1, one thread, BN folded;
    57-character caption trimmed to 102 characters / padded to 201): fp32 GRU 2.8 / 4.9 ms,
    fp32 LSTM 3.0 / 5.4 ms, LSTM with dynamic int8 on LSTM + MatMul/Gemm (DynamicQuantizeLSTM)
    2.1 / 3.7 ms; GRU has no int8 kernel in onnxruntime, and quantizing the convolutions too
    (ConvInteger) is ~2× slower for both. Retrieval after 500 pretraining steps (narrow
    proxy): GRU 88.5 / 57.4 %, LSTM 87.4 / 57.6 % (test / test_unseen, ±1 point): a tie, so
    the fastest robot path decides."""
    rnn_hidden: int = 512
    embedding_dim: int = 1024
    batch_norm: bool = True
    """BatchNorm after each convolution (not in Reed's model). Measured on rescue-scenes: a text
    encoder learning the five attributes from captions reached 78 % colour accuracy in 150 steps
    with it and 20 % without (and 43 % with He init at a tuned learning rate); the 10-minute
    pretraining budget needs that. In eval mode it is a per-channel affine map, so padding
    stays exact and export can fold it into the convolution."""
    normalize: bool = False
    """L2-normalise the output (InfoNCE pretraining); inside the model, so the exported graph
    hands the generator exactly what it was trained on (docs/ARCHITECTURE.md)."""
    lead_pad: int = 18
    """Padding characters put before the caption inside the model (so the exported graph and
    the robot's ids are unchanged). Without them no receptive field of the valid convolutions
    has a caption's first characters near its centre: char 0 reaches step 0 through one path
    of the conv/pool stack where a central character has hundreds, and the encoder learnt to
    read a colour only from its context ("in a blue ..."). Measured on a 600-step encoder:
    "blue jacket" and "red jacket" embedded at cosine 0.98, "qqqq blue jacket" / "... red ..."
    at 0.20, and the read-back took "blue jacket" for nothing it knows
    (docs/TEXT_ENCODER.md § Terse commands). 18 = two length strides: the first character sits
    at offset 18 of the first window's 48."""
    lead_space: bool = True
    """The last lead character (with `lead_pad` > 0) is a space, not padding, so a caption's
    first word sits behind a word boundary as every later word does. Without it a three-letter
    first word had no window of its own: every kernel-4 window over "red" also holds a
    neighbour, and the windows a caption-initial "red" makes ("<pad>red", "red ") are the one
    no training caption makes and the one "centered " and "injured " make. Measured on a
    1,000-step encoder: "red jacket" embedded at cosine 0.96 to "bed jacket" and to "injured"
    and read colour "?" (docs/TEXT_ENCODER.md § The first word)."""
    LEGACY_FIELDS: ClassVar[dict[str, Any]] = {"lead_pad": 0, "lead_space": False}
    """What a config saved before a field existed was trained with."""

    def __post_init__(self) -> None:
        if self.rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', got {self.rnn!r}")
        if len(self.conv_channels) != 3:
            raise ValueError(f"conv_channels needs 3 sizes, got {self.conv_channels}")
        if self.lead_pad < 0 or self.lead_pad % self.pool_size**2:
            # A multiple of the length stride keeps `min_input_length` exact: the last valid
            # step's window still ends where the padding the caller added ends.
            raise ValueError(
                f"lead_pad must be a multiple of {self.pool_size**2} and >= 0, got {self.lead_pad}"
            )

    @property
    def length_stride(self) -> int:
        """Input characters per output time step (the two max-pools)."""
        return self.pool_size**2

    @property
    def length_extra(self) -> int:
        """Input characters beyond the last valid step's start that its receptive field spans."""
        k, p = self.kernel_size - 1, self.pool_size
        return k * p * p + k * p + k

    def output_steps(self, input_length: int) -> int:
        """Time steps after conv/pool/conv/pool/conv for an input of `input_length` characters."""
        k, p = self.kernel_size - 1, self.pool_size
        return ((input_length - k) // p - k) // p - k

    def min_input_length(self, length: int) -> int:
        """Shortest padded input whose embedding equals that of padding to `max_length`."""
        steps = -(-length // self.length_stride)
        return min(self.max_length, steps * self.length_stride + self.length_extra)


class CharCnnRnn(nn.Module):
    """φ(t): char ids (B, T) + lengths (B,) → text embedding (B, embedding_dim)."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3 = config.conv_channels
        k = config.kernel_size
        if config.output_steps(config.max_length) < 1:
            raise ValueError(f"max_length {config.max_length} too short for the convolutions")
        # A convolution over one-hot input is a sum of gathered weight columns; we keep the weight
        # in Conv1d's layout (C1, alphabet, K) so it reads (and loads) like Reed's model, but
        # compute it with embedding lookups: no 70-channel one-hot tensor in training or in ONNX.
        self.conv1 = nn.Conv1d(config.alphabet_size, c1, k)
        self.conv2 = nn.Conv1d(c1, c2, k)
        self.conv3 = nn.Conv1d(c2, c3, k)
        self.pool = nn.MaxPool1d(config.pool_size)
        norm = nn.BatchNorm1d if config.batch_norm else (lambda _: nn.Identity())
        self.norm1, self.norm2, self.norm3 = norm(c1), norm(c2), norm(c3)
        rnn_cls = nn.GRU if config.rnn == "gru" else nn.LSTM
        self.rnn = rnn_cls(c3, config.rnn_hidden, batch_first=True)
        self.project = nn.Linear(config.rnn_hidden, config.embedding_dim)
        self.reset_convolutions()

    def reset_convolutions(self) -> None:
        """He initialisation with the true fan-in (a one-hot window has K non-zero inputs).

        PyTorch's default (kaiming-uniform, a=√5) assumes dense inputs: over one-hot characters
        it starts conv1 at std 0.03, each layer shrinks that further (conv3: 0.013), and two
        unrelated captions embed only ~4 % apart at step 0, which stalled the first few hundred
        steps of pretraining. With He init activations keep unit scale through the stack.
        """
        k = self.config.kernel_size
        nn.init.normal_(self.conv1.weight, 0.0, (2.0 / k) ** 0.5)
        for conv in (self.conv2, self.conv3):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        for conv in (self.conv1, self.conv2, self.conv3):
            nn.init.zeros_(conv.bias)

    def _conv1_one_hot(self, char_ids: torch.Tensor) -> torch.Tensor:
        """conv1(one_hot(ids)) as K shifted gathers: (B, T) → (B, C1, T-K+1)."""
        k = self.config.kernel_size
        # (C1, A, K) → (K, A+1, C1) with a zero row for the padding id 0.
        table = F.pad(self.conv1.weight.permute(2, 1, 0), (0, 0, 1, 0))
        steps = char_ids.shape[1] - k + 1
        out = self.conv1.bias
        for i in range(k):
            out = out + F.embedding(char_ids[:, i : i + steps], table[i])  # (B, T-K+1, C1)
        return out.transpose(1, 2)

    def fold_batch_norm(self) -> CharCnnRnn:
        """An eval-mode copy with each BatchNorm folded into its convolution (for export).

        The copy has `batch_norm=False` and computes the same function as `self.eval()`.
        """
        config = dataclasses.replace(self.config, batch_norm=False)
        folded = CharCnnRnn(config)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("norm")}
        if self.config.batch_norm:
            for i in (1, 2, 3):
                conv, bn = getattr(self, f"conv{i}"), getattr(self, f"norm{i}")
                assert isinstance(bn, nn.BatchNorm1d) and bn.running_mean is not None
                weight, bias = fuse_conv_bn_weights(
                    conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                    bn.weight, bn.bias,
                )  # fmt: skip
                state[f"conv{i}.weight"], state[f"conv{i}.bias"] = weight.detach(), bias.detach()
        folded.load_state_dict(state)
        return folded.eval()

    def valid_steps(self, lengths: torch.Tensor, steps: int) -> torch.Tensor:
        """Output steps whose receptive field starts on a real character: (B,) in 1..steps."""
        stride = self.config.length_stride
        return torch.clamp((lengths + stride - 1) // stride, min=1, max=steps)

    def forward(self, char_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.config.lead_pad:
            lead = char_ids.new_full((char_ids.shape[0], self.config.lead_pad), tokenizer.PAD_ID)
            if self.config.lead_space:
                lead[:, -1] = tokenizer.SPACE_ID
            char_ids = torch.cat([lead, char_ids], dim=1)  # (B, lead_pad + T)
            lengths = lengths + self.config.lead_pad
        x = self.pool(F.relu(self.norm1(self._conv1_one_hot(char_ids))))  # (B, C1, (T-3)/3)
        x = self.pool(F.relu(self.norm2(self.conv2(x))))  # (B, C2, ((T-3)/3-3)/3)
        x = F.relu(self.norm3(self.conv3(x))).transpose(1, 2)  # (B, S, C3), S = output_steps(T)
        hidden, _ = self.rnn(x)  # (B, S, H)
        steps = hidden.shape[1]
        valid = self.valid_steps(lengths, steps)  # (B,)
        # A forward RNN's state at step s depends only on steps ≤ s, so averaging over valid
        # steps makes the embedding independent of how much padding follows the caption.
        mask = torch.arange(steps, device=hidden.device)[None, :] < valid[:, None]  # (B, S)
        mean = (hidden * mask.unsqueeze(-1)).sum(1) / valid.unsqueeze(-1).to(hidden.dtype)
        out = self.project(mean)  # (B, E)
        return F.normalize(out, dim=1) if self.config.normalize else out


# --------------------------------------------------------------------------------------------
# Image encoder θ(v)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageEncoderConfig:
    """A small CNN on 64×64 images, trained from scratch jointly with the text encoder."""

    channels: tuple[int, ...] = (32, 64, 128, 256)
    """Output channels of the stride-2 stages (64 → 32 → 16 → 8 → 4)."""
    extra_convs: int = 0
    """3×3 convolutions after each stride-2 one. Default 0 (a DCGAN-discriminator-like trunk):
    it learns all five rescue-scenes attributes from pixels in ~150 steps (measured with a
    linear probe), and one extra convolution per stage would double the step time."""
    embedding_dim: int = 1024
    image_size: int = 64
    normalize: bool = False
    """L2-normalise the output, like `TextEncoderConfig.normalize`."""

    def __post_init__(self) -> None:
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by 2^{len(self.channels)}"
            )


class ImageEncoder(nn.Module):
    """θ(v): image (B, 3, 64, 64) in [-1, 1] → embedding (B, embedding_dim)."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in config.channels:
            layers += [
                nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            for _ in range(config.extra_convs):
                layers += [
                    nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True),
                ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = config.image_size // 2 ** len(config.channels)
        # Flatten rather than average-pool: where the person lies (left / centre / right) is part
        # of the description, and a global average would throw the layout away.
        self.project = nn.Linear(c_in * side * side, config.embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images)  # (B, C_last, 4, 4) for 64×64 input and four stages
        out = self.project(x.flatten(1))  # (B, E)
        return F.normalize(out, dim=1) if self.config.normalize else out


# --------------------------------------------------------------------------------------------
# GAN: generator G(z, φ(t)) and matching-aware discriminator D(x, φ(t))
# --------------------------------------------------------------------------------------------


TEXT_NORMS: tuple[str, ...] = ("batch", "none")
UPSAMPLES: tuple[str, ...] = ("deconv", "resize")


@dataclass(frozen=True)
class GANConfig:
    """DCGAN-64 conditioned on a text embedding, as in Reed et al. 2016."""

    noise_dim: int = 100
    embedding_dim: int = 1024
    """Width of the text encoder's output."""
    projected_dim: int = 128
    """The embedding is compressed to this with Linear + `text_norm` + LeakyReLU(0.2)."""
    text_norm: str = "batch"
    """Normalisation in the text projection of both networks: "batch" (Reed's BatchNorm) or
    "none". In training, batch norm makes one caption's conditioning depend on the other
    captions in its batch; at inference (running statistics) both are per-sample. The choice is
    measured in docs/GAN_TRAINING.md § Ablation."""
    ngf: int = 64
    ndf: int = 64
    residual: bool = False
    """Residual blocks at 4×4 and 8×8 in both networks, as in Reed's released CUB model."""
    image_size: int = 64
    upsample: str = "deconv"
    """G's four ×2 stages: "deconv" (DCGAN's free 4×4 transposed convolution) or "resize"
    (nearest ×2 then a 3×3 convolution, Odena et al. 2016, "Deconvolution and Checkerboard
    Artifacts"). A "resize" stage is computed as the ConvTranspose2d(4, 2, 1) it equals
    (`ResizeConv`), so export and the robot see the same graph either way."""

    def __post_init__(self) -> None:
        if self.text_norm not in TEXT_NORMS:
            raise ValueError(f"text_norm must be one of {TEXT_NORMS}, got {self.text_norm!r}")
        if self.upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {self.upsample!r}")
        if self.image_size != 64:
            raise ValueError(f"only 64×64 images are supported, got {self.image_size}")


def _text_projection(config: GANConfig) -> nn.Sequential:
    """(B, E) → (B, projected_dim). Always three modules (linear, norm, activation) so that the
    weight names stay "0.*" and export folds or copies by position; "none" is an Identity."""
    norm = nn.BatchNorm1d(config.projected_dim) if config.text_norm == "batch" else nn.Identity()
    return nn.Sequential(
        nn.Linear(config.embedding_dim, config.projected_dim),
        norm,
        nn.LeakyReLU(0.2, inplace=True),
    )


class ResidualBlock(nn.Module):
    """Reed's bottleneck block: 1×1 → 3×3 → 3×3 convolutions added to the input, then `act`."""

    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__()
        mid = channels // 4
        self.body = nn.Sequential(
            nn.Conv2d(channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            type(act)(*_act_args(act)),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            type(act)(*_act_args(act)),
            nn.Conv2d(mid, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def _act_args(act: nn.Module) -> tuple[Any, ...]:
    return (act.negative_slope,) if isinstance(act, nn.LeakyReLU) else ()


class ResizeConv(nn.Module):
    """Nearest-neighbour ×2 upsampling then a 3×3 convolution (padding 1), without bias.

    (B, C_in, H, W) → (B, C_out, 2H, 2W). Every output pixel of a free ConvTranspose2d(4, 2, 1)
    mixes a different subset of its kernel (one of four phases), which lets G learn a 2-pixel
    checkerboard; here all four phases are sums of one 3×3 kernel, so a flat input stays flat.
    The composition is itself that transposed convolution with the 4×4 kernel
    `transposed_weight()` (the 3×3 kernel, flipped, summed over every 2×2 offset), so it runs
    as one ConvTranspose2d, and export turns it into a plain one (`as_conv_transpose`).
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 3, 3))  # Conv2d layout
        nn.init.normal_(self.weight, 0.0, 0.02)

    def transposed_weight(self) -> torch.Tensor:
        """(C_out, C_in, 3, 3) → the equal ConvTranspose2d(4, 2, 1) weight (C_in, C_out, 4, 4).

        Output row p of ConvTranspose2d(4, 2, 1) takes input row i through kernel row
        a = p + 1 − 2i; the upsample-then-convolve reads input row i = (p + dy) // 2 through
        kernel row dy + 1 ∈ {0, 1, 2}, so kernel row a gathers the flipped rows a − 1 and a.
        """
        flipped = self.weight.flip(2, 3).transpose(0, 1)  # (C_in, C_out, 3, 3)
        return sum(F.pad(flipped, (dx, 1 - dx, dy, 1 - dy)) for dy in (0, 1) for dx in (0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.transposed_weight(), stride=2, padding=1)

    def as_conv_transpose(self) -> nn.ConvTranspose2d:
        """The plain nn.ConvTranspose2d(4, 2, 1) computing exactly this."""
        c_out, c_in = self.weight.shape[:2]
        deconv = nn.ConvTranspose2d(
            c_in, c_out, 4, 2, 1, bias=False, device=self.weight.device, dtype=self.weight.dtype
        )
        deconv.weight.data.copy_(self.transposed_weight().detach())
        return deconv


def _upsample_x2(c_in: int, c_out: int, mode: str) -> nn.Module:
    """One ×2 stage of G, (B, C_in, H, W) → (B, C_out, 2H, 2W)."""
    if mode == "resize":
        return ResizeConv(c_in, c_out)
    return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)


class UpBlock(nn.Module):
    """Transposed convolution → BatchNorm → ReLU; export folds `bn` into `conv` and rewrites it.

    `conv` is an nn.ConvTranspose2d, or a `ResizeConv` for a ×2 stage of GANConfig.upsample
    "resize"."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        *,
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if (kernel, stride, padding) == (4, 2, 1):
            self.conv: nn.Module = _upsample_x2(c_in, c_out, upsample)
        else:
            self.conv = nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Generator(nn.Module):
    """G: noise (B, noise_dim), text embedding (B, E) → image (B, 3, 64, 64) in [-1, 1]."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        ngf = config.ngf
        self.project_text = _text_projection(config)
        self.blocks = nn.ModuleList(
            [
                UpBlock(config.noise_dim + config.projected_dim, ngf * 8, 4, 1, 0),  # 1 → 4
                UpBlock(ngf * 8, ngf * 4, 4, 2, 1, upsample=config.upsample),  # 4 → 8
                UpBlock(ngf * 4, ngf * 2, 4, 2, 1, upsample=config.upsample),  # 8 → 16
                UpBlock(ngf * 2, ngf, 4, 2, 1, upsample=config.upsample),  # 16 → 32
            ]
        )
        # Residual refinement after the 4×4 and 8×8 stages (block index → module).
        self.residual = nn.ModuleDict(
            {
                "0": ResidualBlock(ngf * 8, nn.ReLU(inplace=True)),
                "1": ResidualBlock(ngf * 4, nn.ReLU(inplace=True)),
            }
            if config.residual
            else {}
        )
        self.to_rgb = _upsample_x2(ngf, 3, config.upsample)  # 32 → 64

    def as_deconv(self) -> Generator:
        """The same function with every `ResizeConv` a plain ConvTranspose2d (config upsample
        "deconv"): what export folds and rewrites. A "deconv" generator returns itself."""
        if self.config.upsample == "deconv":
            return self
        weight = self.to_rgb.weight
        plain = Generator(dataclasses.replace(self.config, upsample="deconv"))
        plain.to(device=weight.device, dtype=weight.dtype)
        state = {}
        for name, module in self.named_modules():
            if isinstance(module, ResizeConv):
                state[f"{name}.weight"] = module.as_conv_transpose().weight.detach()
        for key, value in self.state_dict().items():
            state.setdefault(key, value)
        plain.load_state_dict(state)
        plain.train(self.training)
        return plain

    def forward(self, noise: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        text = self.project_text(text_embedding)  # (B, 128)
        x = torch.cat([noise, text], dim=1)[:, :, None, None]  # (B, noise_dim + 128, 1, 1)
        # (B, ngf*8, 4, 4) → (B, ngf*4, 8, 8) → (B, ngf*2, 16, 16) → (B, ngf, 32, 32)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if str(i) in self.residual:
                x = self.residual[str(i)](x)
        return torch.tanh(self.to_rgb(x))  # (B, 3, 64, 64)


class Discriminator(nn.Module):
    """D: image (B, 3, 64, 64) + text embedding → (logit (B,), joint features (B, ndf*8, 4, 4))."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        ndf = config.ndf
        lrelu = nn.LeakyReLU(0.2, inplace=True)

        def down(c_in: int, c_out: int, bn: bool = True) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not bn)]
            if bn:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            return layers

        stages: list[nn.Module] = [
            *down(3, ndf, bn=False),  # 64 → 32
            *down(ndf, ndf * 2),  # 32 → 16
            *down(ndf * 2, ndf * 4),  # 16 → 8
        ]
        if config.residual:
            stages.append(ResidualBlock(ndf * 4, nn.LeakyReLU(0.2, inplace=True)))
        stages += down(ndf * 4, ndf * 8)  # 8 → 4
        if config.residual:
            stages.append(ResidualBlock(ndf * 8, nn.LeakyReLU(0.2, inplace=True)))
        self.image_path = nn.Sequential(*stages)
        self.project_text = _text_projection(config)
        self.joint = nn.Sequential(
            nn.Conv2d(ndf * 8 + config.projected_dim, ndf * 8, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            lrelu,
        )
        self.score = nn.Conv2d(ndf * 8, 1, 4, 1, 0)

    def forward(
        self, images: torch.Tensor, text_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.match_text(self.image_features(images), text_embedding)

    # The two halves of `forward`, public because GAN-CLS scores the same real images against
    # their own and a mismatched caption: the trainer runs the image path (almost all of D's
    # work) once and `match_text` twice (train/gan/trainer.py, `DiscriminatorStep`).
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The image path alone: (B, 3, 64, 64) → (B, ndf*8, 4, 4)."""
        return self.image_path(images)

    def match_text(
        self, features: torch.Tensor, text_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features (B, ndf*8, 4, 4) + text (B, E) → (logit (B,), joint (B, ndf*8, 4, 4))."""
        text = self.project_text(text_embedding)  # (B, 128)
        text = text[:, :, None, None].expand(-1, -1, *features.shape[2:])  # (B, 128, 4, 4)
        joint = self.joint(torch.cat([features, text], dim=1))  # (B, ndf*8, 4, 4)
        return self.score(joint).flatten(), joint  # (B,), (B, ndf*8, 4, 4)


# --------------------------------------------------------------------------------------------
# Read-back ψ(φ(t)): what the robot understood a caption to say
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadBackConfig:
    """Heads on the text embedding that read a caption back as attributes (docs/TEXT_ENCODER.md
    § Read-back). One softmax block per attribute over its values plus a last "not stated" class,
    and one off-domain logit (the caption describes nothing the robot knows)."""

    embedding_dim: int = 1024
    value_counts: tuple[int, ...] = (8, 6, 3, 3, 2)
    """Values per attribute, in `train.data.attributes.ATTRIBUTE_NAMES` order."""
    hidden: int = 256
    """Width of the one hidden layer (0: linear heads)."""
    linear_attributes: bool = False
    """The attribute blocks read the normalised embedding directly and only the off-domain logit
    goes through the hidden layer. Why: a hidden layer fitted on the training captions learns
    their colour×terrain combinations and misreads held-out ones (the recipe encoder's heads:
    colour 66.9 % right on `test_unseen`, a linear read of the same embedding 99.7 %), while
    "is this a rescue caption at all" is not linear in φ (docs/TEXT_ENCODER.md § Read-back).
    False: one shared hidden layer (checkpoints saved before this field)."""
    known_words: tuple[str, ...] = ()
    """The words of the captions the heads were fitted on (`train.text.readback.known_words`),
    which export puts in the bundle so the robot can name a caption's words it never learnt
    (`edge_runtime.vocabulary`). Not part of the network; () before this field existed."""

    def __post_init__(self) -> None:
        if self.embedding_dim < 1 or self.hidden < 0:
            raise ValueError("embedding_dim must be >= 1 and hidden >= 0")
        if not self.value_counts or min(self.value_counts) < 2:
            raise ValueError(f"value_counts must be >= 2 each, got {self.value_counts}")

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """Logits per attribute: its values, then "not stated"."""
        return tuple(n + 1 for n in self.value_counts)


class ReadBack(nn.Module):
    """ψ: text embedding (B, E) → (attribute logits (B, Σ(n_a + 1)), off-domain logit (B,)).

    Block a of the attribute logits holds attribute a's values in `ATTRIBUTE_VALUES` order and
    then "not stated"; softmax is taken per block. The input is L2-normalised first, so the heads
    read the direction of φ(t) (what InfoNCE shapes), not its length.
    """

    def __init__(self, config: ReadBackConfig) -> None:
        super().__init__()
        self.config = config
        width = config.hidden or config.embedding_dim
        self.trunk: nn.Module = (
            nn.Sequential(nn.Linear(config.embedding_dim, config.hidden), nn.ReLU())
            if config.hidden
            else nn.Identity()
        )
        attribute_width = config.embedding_dim if config.linear_attributes else width
        self.attributes = nn.Linear(attribute_width, sum(config.block_sizes))
        self.off_domain = nn.Linear(width, 1)

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        direction = F.normalize(embedding, dim=1)  # (B, E)
        h = self.trunk(direction)  # (B, hidden) or (B, E)
        attributes = self.attributes(direction if self.config.linear_attributes else h)
        return attributes, self.off_domain(h).squeeze(1)

    def probabilities(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-block softmax (B, Σ(n_a + 1)), off-domain probability (B,)): the exported graph's
        outputs."""
        logits, off = self(embedding)
        blocks = [part.softmax(dim=1) for part in logits.split(self.config.block_sizes, dim=1)]
        return torch.cat(blocks, dim=1), torch.sigmoid(off)


MODEL_TYPES: dict[str, tuple[type, type[nn.Module]]] = {
    "text_encoder": (TextEncoderConfig, CharCnnRnn),
    "image_encoder": (ImageEncoderConfig, ImageEncoder),
    "generator": (GANConfig, Generator),
    # The exponential moving average of the generator's weights (docs/GAN_TRAINING.md § EMA).
    "generator_ema": (GANConfig, Generator),
    "discriminator": (GANConfig, Discriminator),
    # Trained with the text encoder; GAN checkpoints carry it on to export (docs/TEXT_ENCODER.md).
    "readback": (ReadBackConfig, ReadBack),
}
"""Checkpoint model name → (config class, network class); see `train.checkpoint.build_model`."""


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), batch-norm scale N(1, 0.02), shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d | nn.Linear | ResizeConv):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:  # ResizeConv has none
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
