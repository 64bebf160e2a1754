"""``SconePipeline``: the user-facing object (diffusers style) for generation and understanding.

    pipe = SconePipeline.from_pretrained("ckpts/Scone", device="cuda", dtype=torch.bfloat16)
    out = pipe.generate(images=[ref1, ref2], prompt="The man from image 1 ...", seed=1234)
    out.image.save("out.png")
    ans = pipe.understand(images=[img], prompt="What is in the picture?")

Defaults are Scone's published single-case settings (spec inference.md §4), unless the model folder's
``scone_config.json`` states its own (``pipe.defaults``). Inputs are checked up
front: unreadable images, empty prompts and sizes that are not multiples of 16 raise ``ValueError``
with a clear message; RGBA / grayscale / CMYK / palette images are converted to RGB (alpha composited
on white, as upstream).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from PIL import Image, UnidentifiedImageError

from data.transforms import ImageTransform, pil_img2rgb, to_tensor_normalized
from inference.context import Context, prefill_text, prefill_vae, prefill_vit
from inference.generation import CFGContexts, SamplingConfig, denoise, generate_text
from modeling.checkpoint import LoadedModel, load_pretrained
from modeling.embeddings import unpatchify_latent
from modeling.tokenizer import encode

log = logging.getLogger(__name__)

# Our own wording of the two "think" system prompts (upstream's exact text is not reproduced here);
# pass ``think_prompt=`` to use another one.
THINK_PROMPT_GENERATE = (
    "Before producing the image, plan it: write your reasoning about the requested content, layout and "
    "details between <think> and </think>, then generate the image."
)
THINK_PROMPT_UNDERSTAND = (
    "Before answering, reason step by step between <think> and </think>, then give the final answer."
)


@dataclass
class GenerationRequest:
    images: list
    prompt: str
    seed: int | None = None
    ref_posterior_noise: list[torch.Tensor] | None = None
    init_noise: torch.Tensor | None = None


@dataclass
class GenerationOutput:
    image: Image.Image
    latent: torch.Tensor  # [h*w, p*p*C] packed latent tokens (upstream's layout), fp32, CPU
    decoded: torch.Tensor  # [1, 3, H, W] VAE output in [-1, 1] units, fp32, CPU
    thought: str | None = None
    seed: int | None = None
    record: dict = field(default_factory=dict)


@dataclass
class UnderstandingOutput:
    text: str
    token_ids: list[int]
    step_logits: torch.Tensor | None = None
    thought: str | None = None


def load_image(image) -> Image.Image:
    """PIL image or path -> RGB PIL image; clear errors for missing / unreadable files."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input image not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"cannot read input image {path}: {e}") from e
    if not isinstance(image, Image.Image):
        raise TypeError(f"images must be PIL images or paths, got {type(image).__name__}")
    return pil_img2rgb(image)


# Scone's published settings (spec inference.md §4). A model folder may override any of them in the
# "inference" object of its scone_config.json (the tiny ShapeWorld model does: 96 px, fewer steps).
UPSTREAM_DEFAULTS: dict = {
    "vae_transform": (1024, 512, 16),  # ImageTransform(max, min, stride) of the references' VAE path
    "vit_transform": (980, 224, 14),
    "height": 1024,
    "width": 1024,
    "num_timesteps": 50,
    "timestep_shift": 3.0,
    "cfg_text_scale": 4.0,
    "cfg_img_scale": 2.0,
    "cfg_interval": (0.0, 1.0),
    "cfg_renorm_type": "text_channel",
    "cfg_renorm_min": 0.0,
}


def model_defaults(config) -> dict:
    """Upstream defaults updated with the folder's ``scone_config.json`` "inference" entries (validated)."""
    own = dict(config.extra.get("inference", {}))
    unknown = sorted(set(own) - set(UPSTREAM_DEFAULTS))
    if unknown:
        raise ValueError(
            f"scone_config.json inference: unknown keys {unknown} (known: {list(UPSTREAM_DEFAULTS)})"
        )
    out = {**UPSTREAM_DEFAULTS, **own}
    for k in ("vae_transform", "vit_transform", "cfg_interval"):
        out[k] = tuple(out[k])
    return out


class SconePipeline:
    def __init__(
        self,
        loaded: LoadedModel,
        vae_transform: tuple[int, int, int] | None = None,
        vit_transform: tuple[int, int, int] | None = None,
    ):
        """Transforms default to the model's (``self.defaults``); pass them to override."""
        self.loaded = loaded
        self.model = loaded.model
        self.vae = loaded.vae
        self.tokenizer = loaded.tokenizer
        self.special = loaded.special_ids
        self.config = loaded.config
        self.defaults = model_defaults(loaded.config)
        self.vae_transform = ImageTransform(*(vae_transform or self.defaults["vae_transform"]))
        self.vit_transform = ImageTransform(*(vit_transform or self.defaults["vit_transform"]))

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        weights_file: str | None = None,
        **kwargs,
    ) -> SconePipeline:
        """``weights_file=None`` loads ``model.safetensors`` (Scone; ``ema.safetensors`` if that is all there is)."""
        return cls(
            load_pretrained(path_or_hub_id, device=device, dtype=dtype, weights_file=weights_file), **kwargs
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ inputs
    def _prepare_images(self, images) -> list[Image.Image]:
        if images is None:
            return []
        if isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images]
        return [self.vae_transform.resize(load_image(im)) for im in images]

    def _check_size(self, height: int, width: int) -> tuple[int, int]:
        step = self.config.latent_downsample
        if height % step or width % step or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {step}, got {height}x{width}")
        h, w = height // step, width // step
        limit = self.config.max_latent_size
        if h > limit or w > limit:
            raise ValueError(f"{height}x{width} exceeds the model's maximum of {limit * step} px per side")
        return h, w

    @staticmethod
    def _check_prompt(prompt) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        return prompt

    # ------------------------------------------------------------------ generation
    def _build_contexts(
        self, req: GenerationRequest, generator, think, think_prompt, max_think_tokens, record
    ):
        model, sp, L = self.model, self.special, self.config.llm.num_hidden_layers
        gen, cfg_img = Context.empty(L), Context.empty(L)
        cfg_text = gen.snapshot()
        steps = record.setdefault("context_steps", []) if record is not None else None
        if think:
            for c in (gen, cfg_img):
                prefill_text(model, c, encode(self.tokenizer, think_prompt or THINK_PROMPT_GENERATE), sp)
        images = self._prepare_images(req.images)
        noises = req.ref_posterior_noise
        if noises is not None and len(noises) != len(images):
            raise ValueError(f"ref_posterior_noise has {len(noises)} tensors for {len(images)} images")
        for i, im in enumerate(images):
            noise = None if noises is None else noises[i]
            r1 = prefill_vae(
                model, self.vae, gen, to_tensor_normalized(im), sp, noise=noise, generator=generator
            )
            r2 = prefill_vit(model, gen, self.vit_transform(im), sp)
            if steps is not None:
                steps += [("gen", r1), ("gen", r2)]
            cfg_text = gen.snapshot()  # rule (b): after every image
        ids = encode(self.tokenizer, self._check_prompt(req.prompt))
        cfg_text = gen.snapshot()  # rule (a): before the text
        r = prefill_text(model, gen, ids, sp)
        r_img = prefill_text(model, cfg_img, ids, sp)
        if steps is not None:
            steps += [("gen", r), ("cfg_img", r_img)]
        thought = None
        if think:
            out, _ = generate_text(model, gen, sp, max_think_tokens)
            thought = self._decode_text(out)
            prefill_text(model, gen, encode(self.tokenizer, thought), sp)
        return CFGContexts(gen, cfg_text, cfg_img), thought

    def generate_batch(
        self,
        requests: list[GenerationRequest],
        height: int | None = None,
        width: int | None = None,
        num_timesteps: int | None = None,
        timestep_shift: float | None = None,
        cfg_text_scale: float | None = None,
        cfg_img_scale: float | None = None,
        cfg_interval: tuple[float, float] | None = None,
        cfg_renorm_type: str | None = None,
        cfg_renorm_min: float | None = None,
        think: bool = False,
        think_prompt: str | None = None,
        max_think_tokens: int = 1000,
        batch_cfg: bool = True,
        progress: bool = False,
        record: dict | None = None,
    ) -> list[GenerationOutput]:
        """Generate one image per request; all requests and CFG branches share each denoising forward.

        Random draws per request, in upstream's order: one VAE posterior noise per reference image, then
        the initial latent noise [h*w, p*p*C] — from ``torch.Generator().manual_seed(seed)`` when the
        request has a seed, else from the global CPU generator. Sampling arguments left at None take the
        model's defaults (``self.defaults``: Scone's published settings unless the folder overrides them).
        """
        given = {
            "height": height,
            "width": width,
            "num_timesteps": num_timesteps,
            "timestep_shift": timestep_shift,
            "cfg_text_scale": cfg_text_scale,
            "cfg_img_scale": cfg_img_scale,
            "cfg_interval": cfg_interval,
            "cfg_renorm_type": cfg_renorm_type,
            "cfg_renorm_min": cfg_renorm_min,
        }
        o = {k: self.defaults[k] if v is None else v for k, v in given.items()}
        h, w = self._check_size(o["height"], o["width"])
        sampling = SamplingConfig(
            o["num_timesteps"],
            o["timestep_shift"],
            o["cfg_text_scale"],
            o["cfg_img_scale"],
            tuple(o["cfg_interval"]),
            o["cfg_renorm_type"],
            o["cfg_renorm_min"],
        )
        dim = self.config.patch_latent_dim
        contexts, noises, thoughts = [], [], []
        for k, req in enumerate(requests):
            gen = torch.Generator().manual_seed(int(req.seed)) if req.seed is not None else None
            ctxs, thought = self._build_contexts(
                req, gen, think, think_prompt, max_think_tokens, record if k == 0 else None
            )
            if req.init_noise is not None:
                noise = req.init_noise.float().reshape(h * w, dim)
            else:
                noise = torch.randn(h * w, dim, generator=gen)
            contexts.append(ctxs)
            noises.append(noise)
            thoughts.append(thought)
        if record is not None:
            c = contexts[0]
            record["query_rope"] = {
                "full": c.full.rope,
                "no_text": c.no_text.rope,
                "no_image": c.no_image.rope,
            }
            record["query_kv_len"] = {
                "full": c.full.kv_len,
                "no_text": c.no_text.kv_len,
                "no_image": c.no_image.kv_len,
            }
        steps = record.setdefault("denoise_steps", []) if record is not None else None
        latents = denoise(
            self.model,
            contexts,
            noises,
            [(h, w)] * len(requests),
            self.special,
            sampling,
            batch_branches=batch_cfg,
            progress=progress,
            record=steps,
        )
        outs = []
        for req, lat, thought in zip(requests, latents, thoughts):
            decoded = self.decode_latent(lat, h, w)
            outs.append(GenerationOutput(self.to_pil(decoded), lat.cpu(), decoded, thought, req.seed))
        if record is not None:
            outs[0].record = record
        return outs

    def generate(
        self,
        images=None,
        prompt: str = "",
        seed: int | None = None,
        ref_posterior_noise=None,
        init_noise=None,
        **kwargs,
    ) -> GenerationOutput:
        """One image from reference ``images`` (PIL or paths) and an instruction; kwargs as generate_batch."""
        req = GenerationRequest(images or [], prompt, seed, ref_posterior_noise, init_noise)
        return self.generate_batch([req], **kwargs)[0]

    __call__ = generate

    @torch.no_grad()
    def decode_latent(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Packed latent tokens [h*w, p*p*C] -> VAE output [1, 3, 16h, 16w] (fp32, CPU)."""
        p, c = self.config.latent_patch_size, self.config.latent_channel
        z = unpatchify_latent(tokens.float(), h, w, p, c)[None]
        param = next(self.vae.parameters())
        return self.vae.decode(z.to(param.device, param.dtype)).float().cpu()

    @staticmethod
    def to_pil(decoded: torch.Tensor) -> Image.Image:
        """[1, 3, H, W] in [-1, 1] -> PIL RGB; uint8 by truncation, as upstream."""
        arr = ((decoded[0] * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(arr)

    # ------------------------------------------------------------------ understanding
    def _decode_text(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids)
        bos = self.tokenizer.convert_ids_to_tokens(self.special.bos_token_id)
        eos = self.tokenizer.convert_ids_to_tokens(self.special.eos_token_id)
        text = text.split(eos)[0]
        return text.split(bos, 1)[1] if bos in text else text

    @torch.no_grad()
    def understand(
        self,
        images=None,
        prompt: str = "",
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 0.3,
        seed: int | None = None,
        think: bool = False,
        think_prompt: str | None = None,
        return_logits: bool = False,
        record: dict | None = None,
    ) -> UnderstandingOutput:
        """Answer ``prompt`` about ``images`` (ViT view only), greedy by default."""
        model, sp = self.model, self.special
        ctx = Context.empty(self.config.llm.num_hidden_layers)
        steps = record.setdefault("context_steps", []) if record is not None else None
        if think:
            prefill_text(model, ctx, encode(self.tokenizer, think_prompt or THINK_PROMPT_UNDERSTAND), sp)
        for im in self._prepare_images(images):
            rec = prefill_vit(model, ctx, self.vit_transform(im), sp)
            if steps is not None:
                steps.append(("und", rec))
        rec = prefill_text(model, ctx, encode(self.tokenizer, self._check_prompt(prompt)), sp)
        if steps is not None:
            steps.append(("und", rec))
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        ids, logits = generate_text(
            model, ctx, sp, max_new_tokens, do_sample, temperature, gen, return_logits
        )
        text = self._decode_text(ids)
        return UnderstandingOutput(text=text, token_ids=ids, step_logits=logits, thought=None)
