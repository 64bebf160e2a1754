"""Train a small FLUX-architecture autoencoder on ShapeWorld images (the tiny model's ``ae.safetensors``).

The released checkpoints ship FLUX's VAE; a tiny world model needs its own, but of the *same class*
(``modeling.autoencoder.AutoEncoder``) so every loader, pipeline and trainer uses it unchanged. Only the
geometry differs (``--ch``, ``--ch_mult``, ``--num_res_blocks``), and ``infer_ae_params`` reads that
back from the tensor shapes.

Scale and shift are not stored in ``ae.safetensors`` (they are FLUX's constants in every loader), so
the KL term is taken on the *scaled* latent ``scale * (mean - shift)`` against N(0, 1): the encoder
learns to produce latents the rectified-flow model can use with the constants it already applies.

Images are rendered on the fly from the world generator with a seed stream of their own, so the VAE
sees references (one or several subjects on varied backdrops) and targets (scenes) in the proportions
the tasks produce, and never reads the benchmark.

    python -m train.autoencoder_train --out ckpts/tiny-work/ae.safetensors --steps 1000

``--train_part decoder --init AE`` fine-tunes the decoder alone. The encoder stays bit-exact, so the
latents a flow model was trained on do not move and the result can replace ``ae.safetensors`` in an
already trained model folder (``docs/shapeworld.md`` §4.3).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.synthetic.shapeworld import TASK_TYPES, render_case, sample_case
from data.transforms import to_tensor_normalized
from modeling.autoencoder import AutoEncoder, AutoEncoderParams
from modeling.files import save_safetensors

logger = logging.getLogger(__name__)


def world_batch(rng: random.Random, batch_size: int, size: int, crop: int = 0) -> torch.Tensor:
    """``batch_size`` ShapeWorld images (references and targets mixed) -> [B, 3, S, S] in [-1, 1].

    S = ``size``, or ``crop`` when > 0: a random square crop of each image (cheaper steps: the network is
    convolutional but for one attention block at the lowest resolution).
    """
    images = []
    while len(images) < batch_size:
        case = sample_case(rng, rng.choice(TASK_TYPES), size=size)
        refs, target = render_case(case)
        images.extend([*refs, target])
    rng.shuffle(images)
    tensors = []
    for im in images[:batch_size]:
        if 0 < crop < size:
            y, x = rng.randrange(0, size - crop + 1, 8), rng.randrange(0, size - crop + 1, 8)
            im = im.crop((x, y, x + crop, y + crop))
        tensors.append(to_tensor_normalized(im))
    return torch.stack(tensors)


def ae_losses(
    ae: AutoEncoder, x: torch.Tensor, kl_weight: float, decoder_only: bool = False
) -> dict[str, torch.Tensor]:
    """Reconstruction through the sampled posterior + KL of the *scaled* posterior against N(0, 1).

    x: [B, 3, H, W] in [-1, 1]. Returns ``loss``, ``l1``, ``mse``, ``kl`` (scalars). ``decoder_only``:
    the encoder runs without gradients and the KL term is left out of the loss (it is still reported).
    """
    with torch.set_grad_enabled(torch.is_grad_enabled() and not decoder_only):
        mean, logvar = ae.posterior(x)
    logvar = logvar.clamp(-30.0, 20.0)
    s = ae.scale_factor
    mu = s * (mean - ae.shift_factor)  # the latent the generator sees
    var = (s * s) * logvar.exp()
    z = mu + var.sqrt() * torch.randn_like(mu)
    recon = ae.decode(z)
    l1 = (recon - x).abs().mean()
    mse = F.mse_loss(recon, x)
    kl = 0.5 * (mu.pow(2) + var - var.log() - 1.0).mean()
    loss = l1 + mse if decoder_only else l1 + mse + kl_weight * kl
    return {"loss": loss, "l1": l1, "mse": mse, "kl": kl}


@torch.no_grad()
def latent_stats(ae: AutoEncoder, x: torch.Tensor) -> dict[str, float]:
    """Statistics of the scaled posterior mean on ``x``: what the flow model will be trained on."""
    z = ae.encode_mean(x)
    recon = ae.decode(z).clamp(-1, 1)
    psnr = 10 * math.log10(4.0 / F.mse_loss(recon, x).item())
    return {"latent_mean": z.mean().item(), "latent_std": z.std().item(), "psnr_db": psnr}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", required=True, help="output ae.safetensors path")
    p.add_argument("--size", type=int, default=96, help="image side (multiple of 8)")
    p.add_argument("--ch", type=int, default=32, help="multiple of 32 (GroupNorm groups)")
    p.add_argument("--ch_mult", default="1,1,2,2", help="comma list; len-1 = log2(downsample)")
    p.add_argument("--num_res_blocks", type=int, default=1)
    p.add_argument("--z_channels", type=int, default=16)
    p.add_argument(
        "--crop", type=int, default=48, help="train on random crops of this side (0 = whole image)"
    )
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl_weight", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="continue from this ae.safetensors (its geometry wins)")
    p.add_argument(
        "--train_part",
        default="all",
        choices=["all", "decoder"],
        help="decoder: freeze the encoder (needs --init). The latent space a flow model was trained on "
        "stays exactly the same, so the new decoder can replace the old one in a trained model folder",
    )
    p.add_argument("--log_every", type=int, default=100)
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if available"
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    params = AutoEncoderParams(
        ch=args.ch,
        ch_mult=tuple(int(c) for c in args.ch_mult.split(",")),
        num_res_blocks=args.num_res_blocks,
        z_channels=args.z_channels,
    )
    params.downsample = 2 ** (len(params.ch_mult) - 1)
    if args.size % params.downsample:
        raise SystemExit(f"--size {args.size} is not a multiple of the downsample factor {params.downsample}")
    decoder_only = args.train_part == "decoder"
    if decoder_only and not args.init:
        raise SystemExit("--train_part decoder needs --init (the autoencoder whose encoder is kept)")
    if args.init:
        from modeling.autoencoder import load_autoencoder

        ae = load_autoencoder(args.init).float()
        params = ae.params
    else:
        ae = AutoEncoder(params)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    ae = ae.to(device)  # float32 everywhere: the VAE is small, and its latents set the flow model's targets
    n_params = sum(p.numel() for p in ae.parameters())
    logger.info("autoencoder %s: %.2f M parameters", params, n_params / 1e6)
    if decoder_only:
        ae.encoder.requires_grad_(False)
    trainable = [p for p in ae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:  # linear warmup, cosine to 5%
        if step < warmup:
            return args.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    # Its own image stream: never the benchmark's cases. The decoder phase's stream does not depend on
    # the --init path, so the same command gives the same decoder wherever the work folder is.
    stream = (
        f"autoencoder-decoder-{args.seed}" if decoder_only else f"autoencoder-{args.seed}-{args.init or ''}"
    )
    rng = random.Random(stream)
    held_out = world_batch(random.Random(f"autoencoder-val-{args.seed}"), 64, args.size).to(device)
    t0 = time.time()
    ae.train()
    for step in tqdm(range(args.steps), desc="autoencoder", mininterval=10):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = world_batch(rng, args.batch_size, args.size, args.crop).to(device)
        out = ae_losses(ae, x, args.kl_weight, decoder_only)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            logger.info(
                "step %d loss %.4f l1 %.4f mse %.4f kl %.3f (%.2f s/step)",
                step,
                *(out[k].item() for k in ("loss", "l1", "mse", "kl")),
                (time.time() - t0) / (step + 1),
            )
    ae.eval()
    stats = latent_stats(ae, held_out)
    logger.info("held-out: %s", json.dumps({k: round(v, 4) for k, v in stats.items()}))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    save_safetensors({k: v.detach().cpu() for k, v in ae.state_dict().items()}, tmp)
    os.replace(tmp, args.out)
    with open(os.path.splitext(args.out)[0] + "_stats.json", "w") as f:
        json.dump({"args": vars(args), "num_params": n_params, **stats}, f, indent=1)
    logger.info("wrote %s in %.0f s", args.out, time.time() - t0)


if __name__ == "__main__":
    main()
