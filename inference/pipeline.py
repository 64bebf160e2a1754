"""``SconePipeline``: the user-facing object (diffusers style) for generation and understanding.

    pipe = SconePipeline.from_pretrained("ckpts/Scone", device="cuda", dtype=torch.bfloat16)
    out = pipe.generate(images=[ref1, ref2], prompt="The man from image 1 ...", seed=1234)
    out.image.save("out.png")
    ans = pipe.understand(images=[img], prompt="What is in the picture?")

Sampling defaults are Scone's published single-case settings (``inference.sampling.SamplingConfig``),
unless the model folder's ``scone_config.json`` states its own (``pipe.sampling``). Inputs are checked up
front: unreadable images, empty prompts and sizes that are not multiples of 16 raise ``ValueError``
with a clear message; RGBA / grayscale / CMYK / palette images are converted to RGB (alpha composited
on white, as upstream).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from data.transforms import ImageTransform, pil_img2rgb, to_tensor_normalized
from inference.context import Context, Item, prefill
from inference.generation import CFGContexts, denoise, generate_text
from inference.offload import OFFLOAD_MODES, ModelOffload, apply_group_offload
from inference.sampling import SamplingConfig
from modeling.checkpoint import LoadedModel, load_pretrained
from modeling.config import UPSTREAM_TRANSFORMS, run_transforms
from modeling.lora import attach_adapter, load_adapter, read_adapter, remove_lora, resolve_adapter
from modeling.prompts import THINK_PROMPT_GENERATE, THINK_PROMPT_UNDERSTAND
from modeling.sequence import unpatchify
from modeling.tokenizer import encode

log = logging.getLogger(__name__)

# Positions of the context kept free of the instruction's tokens: markers, one per image, the answer's start.
CONTEXT_MARGIN = 64


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
    evaluations: int | None = None  # network evaluations of its CFG branches (fewer with a step cache)


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
        # DecompressionBombError: a small file that declares more pixels than PIL allows to decode
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
            raise ValueError(f"cannot read input image {path}: {e}") from e
    if not isinstance(image, Image.Image):
        raise TypeError(f"images must be PIL images or paths, got {type(image).__name__}")
    return pil_img2rgb(image)


def model_defaults(config) -> tuple[SamplingConfig, dict]:
    """(sampling settings, transforms): Scone's published ones updated with the folder's
    ``scone_config.json`` "inference" entries (validated)."""
    own = dict(config.extra.get("inference", {}))
    known = [*SamplingConfig.names(), *UPSTREAM_TRANSFORMS]
    unknown = sorted(set(own) - set(known))
    if unknown:
        raise ValueError(f"scone_config.json inference: unknown keys {unknown} (known: {known})")
    sampling = SamplingConfig().replace(**{k: v for k, v in own.items() if k not in UPSTREAM_TRANSFORMS})
    return sampling, run_transforms(own)


class SconePipeline:
    def __init__(
        self,
        loaded: LoadedModel,
        vae_transform: tuple[int, int, int] | None = None,
        vit_transform: tuple[int, int, int] | None = None,
    ):
        """Transforms default to the model's; pass them to override. ``self.sampling``: the model's
        sampling settings (``SamplingConfig``), the defaults of every ``generate`` call."""
        self.loaded = loaded
        self.model = loaded.model
        self.vae = loaded.vae
        self.tokenizer = loaded.tokenizer
        self.special = loaded.special_ids
        self.config = loaded.config
        self.sampling, transforms = model_defaults(loaded.config)
        self.vae_transform = ImageTransform(*(vae_transform or transforms["vae_transform"]))
        self.vit_transform = ImageTransform(*(vit_transform or transforms["vit_transform"]))
        self.offloader = None  # set by from_pretrained(offload=...)
        self._warned_generation_only = False
        # named LoRA adapters a server switches between per batch (add_adapter / use_adapter)
        self.adapters: dict[str, tuple] = {}
        self.active_adapter: str | None = None
        self._encode_lock = threading.Lock()  # request threads and the worker both count tokens

    def _on_device(self):
        """The model on its compute device for one call (``offload="model"`` moves it there and back)."""
        if isinstance(self.offloader, ModelOffload):
            return self.offloader.on_device()
        return contextlib.nullcontext()

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        weights_file: str | None = None,
        weights: str | None = None,
        offload: str = "none",
        offload_group_size: int = 1,
        compile: bool = False,
        lora: str | None = None,
        lora_scale: float = 1.0,
        **kwargs,
    ) -> SconePipeline:
        """``weights_file=None`` loads ``model.safetensors`` (Scone; ``ema.safetensors`` if that is all there is).
        ``weights``: None keeps ``dtype``; "bf16" | "fp16" | "fp32" | "int8" | "fp8" (weight-only quantized
        decoder blocks, computing in ``dtype``; modeling/weight_formats.py). ``offload``: "none" | "model" |
        "group" (weights in CPU RAM, brought to ``device`` per call or per group of decoder blocks;
        inference/offload.py). ``compile``: the denoising step's decoder layers through ``torch.compile``
        (``Qwen2MoTForCausalLM.compile_layers``; not with group offload). ``lora``: a LoRA adapter folder or hub id (PEFT format, modeling/lora.py)
        applied with ``lora_scale``."""
        if offload not in OFFLOAD_MODES:
            raise ValueError(f"unknown offload {offload!r}; choose one of {', '.join(OFFLOAD_MODES)}")
        device = torch.device(device)
        if offload != "none" and device.type != "cuda":
            log.warning(
                "offload=%s on %s: there is no GPU memory to save, the copies are no-ops", offload, device
            )
        if compile and offload == "group":
            raise ValueError("compile=True cannot trace group offload's per-block copies; choose one of them")
        if offload == "group" and weights in ("int8", "fp8"):
            raise ValueError(
                "offload='group' streams float weights; int8 / fp8 weights need no offload to fit"
            )
        load_device = device if offload == "none" or weights == "fp8" else torch.device("cpu")
        loaded = load_pretrained(
            path_or_hub_id, device=load_device, dtype=dtype, weights_file=weights_file, weights=weights
        )
        if lora is not None:
            load_adapter(loaded.model, resolve_adapter(lora), lora_scale)
            log.info("LoRA adapter %s attached (scale %g)", lora, lora_scale)
        pipe = cls(loaded, **kwargs)
        if compile:
            loaded.model.language_model.compile_layers()
        if offload == "group":
            pipe.offloader = apply_group_offload(loaded.model, device, offload_group_size)
            loaded.vae.to(device)
        elif offload == "model":
            pipe.offloader = ModelOffload([loaded.model, loaded.vae], device)
        return pipe

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ named LoRA adapters
    def add_adapter(self, name: str, path: str, scale: float = 1.0) -> None:
        """Keep the adapter at ``path`` (folder or hub id) under ``name`` for ``use_adapter``; it is attached
        once now to check that it fits the model, then detached."""
        if not name or name in self.adapters:
            raise ValueError(f"adapter name {name!r} is empty or taken")
        config, state = read_adapter(resolve_adapter(path))
        attach_adapter(self.model, config, state, scale, name=name)
        remove_lora(self.model)
        self.adapters[name] = (config, state, scale)
        self.active_adapter = None

    def use_adapter(self, name: str | None) -> None:
        """Run the next calls with adapter ``name`` (None: the base model). Switching detaches one
        adapter and attaches the other: a few MB of copies, never a change of the base weights."""
        if name == self.active_adapter:
            return
        if name is not None and name not in self.adapters:
            raise ValueError(f"unknown adapter {name!r}; loaded: {sorted(self.adapters)}")
        if self.active_adapter is not None:
            remove_lora(self.model)
        self.active_adapter = None
        if name is not None:
            config, state, scale = self.adapters[name]
            attach_adapter(self.model, config, state, scale, name=name)
            self.active_adapter = name

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

    @property
    def max_text_tokens(self) -> int:
        """The most tokens one instruction, question or think budget may have: the LLM's position range
        (``max_position_embeddings``) less ``CONTEXT_MARGIN`` for the markers, the images (one position
        each) and the answer's first tokens."""
        return max(1, self.config.llm.max_position_embeddings - CONTEXT_MARGIN)

    @functools.cached_property
    def _max_chars_per_token(self) -> int:
        # a byte-level BPE token's string is at least as long as the text it decodes to
        return max(len(t) for t in self.tokenizer.get_vocab())

    def encode_prompt(self, prompt, what: str = "prompt") -> list[int]:
        """The token ids of ``prompt``; ``ValueError`` naming the limit when it cannot fit the model's
        context. A text too long to fit whatever its tokens is refused before the tokenizer sees it, and a
        long one is counted on a bounded prefix first, so a huge request costs no huge allocation."""
        prompt = self._check_prompt(prompt)
        limit = self.max_text_tokens
        too_long = f"the {what} is longer than this model's limit of {limit} tokens"
        if len(prompt) > limit * self._max_chars_per_token:
            raise ValueError(f"{too_long} ({len(prompt):,} characters)")
        head = limit * 8  # characters: more than any real text needs for `limit` tokens
        if len(prompt) > head and len(self._encode_locked(prompt[:head])) > limit:
            raise ValueError(f"{too_long} (its first {head:,} characters already exceed it)")
        ids = self._encode_locked(prompt)
        if len(ids) > limit:
            raise ValueError(f"{too_long} ({len(ids):,} tokens)")
        return ids

    def _encode_locked(self, text: str) -> list[int]:
        with self._encode_lock:
            return encode(self.tokenizer, text)

    def check_budget(self, tokens: int, what: str) -> None:
        """A number of tokens to generate (think budget, answer length) must fit the context too."""
        if not 1 <= int(tokens) <= self.max_text_tokens:
            raise ValueError(
                f"{what} must be from 1 to {self.max_text_tokens} (this model's context), got {tokens}"
            )

    # ------------------------------------------------------------------ generation
    def _init_noise(self, req: GenerationRequest, generator, h: int, w: int) -> torch.Tensor:
        dim = self.config.patch_latent_dim
        if req.init_noise is not None:
            return req.init_noise.float().reshape(h * w, dim)
        return torch.randn(h * w, dim, generator=generator)

    def _build_contexts(
        self, requests, ids, images, posteriors, generators, h, w, think, think_prompt, max_think
    ):
        """The three contexts of every request (docs/architecture.md §6): ``full`` sees everything, ``no_image``
        everything but the references, ``no_text`` is ``full`` as it was before the instruction. Built for all
        requests at once: the k-th reference of every request in one forward (VAE view, then ViT view), then
        every instruction in one forward (full and no-image contexts). Random draws per request in upstream's
        order (posterior noises, then the initial noise), so the result does not depend on the batching.
        ``think``: a system prompt first, and each request's plan decoded after its instruction.
        Returns (contexts, initial noises, thoughts)."""
        model, sp, layers = self.model, self.special, self.config.llm.num_hidden_layers
        latents, noises = [], []
        for req, ims, posts, gen in zip(requests, images, posteriors, generators):
            given = req.ref_posterior_noise
            if given is not None and len(given) != len(ims):
                raise ValueError(f"ref_posterior_noise has {len(given)} tensors for {len(ims)} images")
            lat = []
            for i, (mean, logvar) in enumerate(posts):
                eps = given[i] if given is not None else None
                lat.append(self.vae.sample_posterior(mean, logvar, noise=eps, generator=gen)[0])
            latents.append(lat)
            noises.append(self._init_noise(req, gen, h, w))
        full = [Context.empty(layers, "full") for _ in requests]
        no_image = [Context.empty(layers, "no_image") for _ in requests]
        both = list(enumerate(full)) + list(enumerate(no_image))
        if think:
            system = encode(self.tokenizer, think_prompt or THINK_PROMPT_GENERATE)
            prefill(model, sp, [Item(c, ids=system, request=r) for r, c in both])
        for i in range(max((len(ims) for ims in images), default=0)):
            todo = [r for r, ims in enumerate(images) if len(ims) > i]
            prefill(model, sp, [Item(full[r], vae_latent=latents[r][i], request=r) for r in todo])
            prefill(model, sp, [Item(full[r], vit=self.vit_transform(images[r][i]), request=r) for r in todo])
        no_text = [c.snapshot("no_text") for c in full]
        prefill(model, sp, [Item(c, ids=ids[r], request=r) for r, c in both])
        thoughts = [None] * len(requests)
        if think:
            for r, c in enumerate(full):
                thoughts[r] = self._decode_text(generate_text(model, c, sp, max_think)[0])
            plans = [encode(self.tokenizer, t) for t in thoughts]
            prefill(model, sp, [Item(c, ids=plans[r], request=r) for r, c in enumerate(full)])
        return [CFGContexts(*c) for c in zip(full, no_text, no_image)], noises, thoughts

    def generate_batch(
        self,
        requests: list[GenerationRequest],
        sampling: SamplingConfig | None = None,
        think: bool = False,
        think_prompt: str | None = None,
        max_think_tokens: int = 1000,
        batch_cfg: bool = True,
        progress: bool = False,
        callback: Callable[[int, int], None] | None = None,
        **settings,
    ) -> list[GenerationOutput]:
        """Generate one image per request; all requests and CFG branches share each denoising forward.

        ``sampling`` (default ``self.sampling``) updated with any ``SamplingConfig`` field given as a keyword
        (``height=``, ``num_timesteps=``, ``cfg_text_scale=``, ...; None keeps the setting). Random draws per
        request, in upstream's order: one VAE posterior noise per reference image, then the initial latent
        noise [h*w, p*p*C], from ``torch.Generator().manual_seed(seed)`` when the request has a seed, else
        from the global CPU generator. ``callback(done, total)`` is called after every denoising step.
        """
        cfg = (sampling or self.sampling).replace(**settings)
        self._check_size(cfg.height, cfg.width)
        if think:
            self.check_budget(max_think_tokens, "max_think_tokens")
        # every instruction tokenised (and checked against the context) once, before any work starts
        ids = [self.encode_prompt(req.prompt, "instruction") for req in requests]
        with self._on_device():
            return self._generate_batch(
                requests, ids, cfg, think, think_prompt, max_think_tokens, batch_cfg, progress, callback
            )

    def _generate_batch(
        self, requests, ids, cfg, think, think_prompt, max_think_tokens, batch_cfg, progress, callback
    ):
        h, w = self._check_size(cfg.height, cfg.width)
        images = [self._prepare_images(req.images) for req in requests]
        posteriors = self._posteriors(images)
        generators = [
            torch.Generator().manual_seed(int(r.seed)) if r.seed is not None else None for r in requests
        ]
        contexts, noises, thoughts = self._build_contexts(
            requests, ids, images, posteriors, generators, h, w, think, think_prompt, max_think_tokens
        )
        stats: dict = {}
        latents = denoise(
            self.model,
            contexts,
            noises,
            [(h, w)] * len(requests),
            self.special,
            cfg,
            batch_branches=batch_cfg,
            progress=progress,
            callback=callback,
            stats=stats,
        )
        outs = []
        decoded_all = self.decode_latents(latents, h, w)  # one VAE call for the whole batch
        for req, lat, decoded, thought, n_eval in zip(
            requests, latents, decoded_all, thoughts, stats["evaluations"]
        ):
            decoded = decoded[None]
            outs.append(GenerationOutput(self.to_pil(decoded), lat.cpu(), decoded, thought, req.seed, n_eval))
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
    def _posteriors(self, images: list[list[Image.Image]], max_batch: int = 8) -> list[list[tuple]]:
        """The VAE posteriors (mean, logvar), each [1, z, h, w], of every request's references, encoded in
        batches of equal-sized images (one encoder call instead of one per image). Sampling them stays per
        request, in upstream's order (``_build_contexts``)."""
        by_size: dict[tuple, list[tuple[int, int]]] = {}
        for r, ims in enumerate(images):
            for i, im in enumerate(ims):
                by_size.setdefault(im.size, []).append((r, i))
        out: list[list] = [[None] * len(ims) for ims in images]
        for where in by_size.values():
            for start in range(0, len(where), max_batch):
                chunk = where[start : start + max_batch]
                x = torch.stack([to_tensor_normalized(images[r][i]) for r, i in chunk])
                mean, logvar = self.vae.posterior(x)
                for j, (r, i) in enumerate(chunk):
                    out[r][i] = (mean[j : j + 1], logvar[j : j + 1])
        return out

    @torch.no_grad()
    def decode_latents(self, tokens: list[torch.Tensor], h: int, w: int) -> torch.Tensor:
        """B latents of one size, each [h*w, p*p*C] -> VAE outputs [B, 3, 16h, 16w] (fp32, CPU), in one call."""
        p, c = self.config.latent_patch_size, self.config.latent_channel
        z = torch.stack([unpatchify(t.float(), h, w, p, c) for t in tokens])
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
    ) -> UnderstandingOutput:
        """Answer ``prompt`` about ``images`` (ViT view only), greedy by default."""
        self.check_budget(max_new_tokens, "max_new_tokens")
        with self._on_device():
            return self._understand(
                images,
                prompt,
                max_new_tokens,
                do_sample,
                temperature,
                seed,
                think,
                think_prompt,
                return_logits,
            )

    def _understand(
        self, images, prompt, max_new_tokens, do_sample, temperature, seed, think, think_prompt, return_logits
    ):
        if self.config.extra.get("generation_only") and not self._warned_generation_only:
            self._warned_generation_only = True  # once per pipeline, not once per question
            log.warning(
                "%s was trained for image generation only (scone_config.json: generation_only): its answers "
                "are not meaningful",
                self.loaded.folder,
            )
        model, sp = self.model, self.special
        ctx = Context.empty(self.config.llm.num_hidden_layers)
        if think:
            prefill(
                model, sp, [Item(ctx, ids=encode(self.tokenizer, think_prompt or THINK_PROMPT_UNDERSTAND))]
            )
        for im in self._prepare_images(images):
            prefill(model, sp, [Item(ctx, vit=self.vit_transform(im))])
        prefill(model, sp, [Item(ctx, ids=self.encode_prompt(prompt, "question"))])
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        ids, logits = generate_text(
            model, ctx, sp, max_new_tokens, do_sample, temperature, generator, return_logits
        )
        text = self._decode_text(ids)
        return UnderstandingOutput(text=text, token_ids=ids, step_logits=logits, thought=None)
