"""Web demo (Gradio): image generation from reference images and image understanding, for several people
at once on one loaded model.

    pip install -r requirements-app.txt
    python -m inference.app                       # the shipped tiny model, http://127.0.0.1:7860
    python -m inference.app --model_path ckpts/Scone --max_batch_size 4

Requests that arrive together and share their sampling settings run as one ``generate_batch`` call
(``inference.request_batcher``): one forward per denoising step for all of them. The queue is bounded; a
full one answers "busy, try again". Every input is checked before it reaches the queue (``check_*``
below), so a bad upload gets a message and never a stuck or crashed worker. Binds to 127.0.0.1 and makes
no share link unless asked (``--host 0.0.0.0``, ``--share``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import random
import sys
import time

import torch

from inference.cli_common import REPO_ROOT, USER_ERRORS, add_model_args, report_user_error
from inference.flow_sampler import RENORM_TYPES
from inference.pipeline import GenerationRequest, SconePipeline
from inference.request_batcher import QueueFull, RequestBatcher, describe_error
from inference.sampling import SamplingConfig
from inference.serving import (
    Limits,
    add_front_door_args,
    check_images,
    check_new_tokens,
    check_prompt,
    check_sampling,
    image_cost,
    load_served_model,
    understand_key,
)
from inference.step_cache import CACHE_MODES

log = logging.getLogger("scone.app")

EXAMPLE_DIR = os.path.join(REPO_ROOT, "assets", "examples")
EXAMPLES = [
    (
        ["ref1.png", "ref2.png"],
        "Place the green cross from image 1 on the right, on the gray background from image 2.",
    ),
]


def settings_text(cfg: SamplingConfig, seed: int, batch_size: int, seconds: float, waited: float) -> str:
    others = batch_size - 1
    return "\n".join(
        [
            f"seed {seed} · {cfg.width}x{cfg.height} · {cfg.num_timesteps} timesteps · shift {cfg.timestep_shift:g}",
            f"CFG text {cfg.cfg_text_scale:g}, image {cfg.cfg_img_scale:g}, interval "
            f"[{cfg.cfg_interval[0]:g}, {cfg.cfg_interval[1]:g}], renorm {cfg.cfg_renorm_type} "
            f"(min {cfg.cfg_renorm_min:g})" + ("" if cfg.cache == "none" else f", step cache {cfg.cache}"),
            f"{seconds:.2f} s, in one batch with {others} other request{'s' if others != 1 else ''}"
            f" (waited {waited:.2f} s in the queue)",
        ]
    )


class DemoServer:
    """The app's logic without its layout: validate, queue, wait with progress, answer."""

    def __init__(self, pipe: SconePipeline, batcher: RequestBatcher, limits: Limits):
        self.pipe, self.batcher, self.limits = pipe, batcher, limits

    def _wait(self, job, progress, what: str):
        """Block until ``job`` is done, reporting the queue position then the denoising steps."""
        while not job.wait(0.1):
            if progress is None:
                continue
            if job.status == "queued":
                progress(0, desc=f"waiting in the queue (place {self.batcher.position(job) + 1})")
            elif job.progress[1]:
                progress(job.progress, desc=what)
        if job.error is not None:
            raise RuntimeError(f"The request failed: {describe_error(job.error)}")
        return job.result

    def _submit(self, key, payload, cost: float = 0.0):
        try:
            return self.batcher.submit(key, payload, cost)
        except QueueFull as e:
            raise BusyError(f"The server is busy ({e}); try again in a moment.") from e

    def generate(self, files, instruction, seed, height, width, steps, advanced: dict, progress=None):
        """-> (PIL image, settings text). ``ValueError`` for bad input, ``BusyError`` for a full queue."""
        images = check_images(files, self.limits, min_images=1)
        prompt, _ = check_prompt(instruction, "an instruction", self.limits, self.pipe)
        cfg = check_sampling(
            self.pipe.sampling, self.limits, height=height, width=width, num_timesteps=steps, **advanced
        )
        if seed is None or seed == "" or int(seed) < 0:
            seed = random.randrange(2**31)
        seed = int(seed)
        job = self._submit(
            ("generate", None, cfg, False), GenerationRequest(images, prompt, seed), image_cost(images)
        )
        out = self._wait(job, progress, "denoising")
        waited = job.seconds and (time.monotonic() - job.submitted - job.seconds)
        return out.image, settings_text(cfg, seed, job.batch_size, job.seconds, max(0.0, waited))

    def understand(self, files, question, think, max_new_tokens, progress=None) -> tuple[str, str]:
        """-> (answer, note)."""
        images = check_images(files, self.limits, min_images=0)
        prompt, _ = check_prompt(question, "a question", self.limits, self.pipe)
        n = check_new_tokens(max_new_tokens, self.limits, self.pipe, "Max new tokens")
        payload = dict(images=images, prompt=prompt, max_new_tokens=n, think=bool(think))
        job = self._submit(understand_key(None), payload, image_cost(images))
        out = self._wait(job, progress, "answering")
        note = ""
        if self.pipe.config.extra.get("generation_only"):
            note = "This model was trained for image generation only: its answers are not meaningful."
        return out.text, note


class BusyError(RuntimeError):
    pass


# ---------------------------------------------------------------------- the Gradio layout
def build_app(server: DemoServer):
    """The Gradio Blocks of the demo (generation and understanding tabs)."""
    import gradio as gr

    base, lim = server.pipe.sampling, server.limits

    def as_ui_error(fn):
        @functools.wraps(fn)  # Gradio reads the signature: API parameter names and the progress tracker
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (ValueError, BusyError, RuntimeError) as e:
                raise gr.Error(str(e), print_exception=False) from None

        return wrapped

    @as_ui_error
    def on_generate(
        files,
        instruction,
        seed,
        height,
        width,
        steps,
        text_scale,
        img_scale,
        lo,
        hi,
        renorm,
        renorm_min,
        shift,
        cache,
        progress=gr.Progress(),
    ):
        advanced = dict(
            cfg_text_scale=text_scale,
            cfg_img_scale=img_scale,
            cfg_interval_start=lo,
            cfg_interval_end=hi,
            cfg_renorm_type=renorm,
            cfg_renorm_min=renorm_min,
            timestep_shift=shift,
            cache=cache,
        )
        return server.generate(files, instruction, seed, height, width, steps, advanced, progress)

    @as_ui_error
    def on_understand(files, question, think, max_new_tokens, progress=gr.Progress()):
        return server.understand(files, question, think, max_new_tokens, progress)

    side = dict(minimum=16, maximum=lim.max_side, step=16)
    with gr.Blocks(title="Scone", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            f"## Scone: subject-driven image generation\nModel: `{server.pipe.loaded.folder}`. Reference images "
            "are image 1, image 2, ... in upload order; name them that way in the instruction."
        )
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    refs = gr.File(
                        file_count="multiple",
                        file_types=["image"],
                        label=f"Reference images (1 to {lim.max_images}, in order)",
                        elem_id="refs",
                    )
                    instruction = gr.Textbox(label="Instruction", lines=2, elem_id="instruction")
                    with gr.Row():
                        seed = gr.Number(value=1234, precision=0, label="Seed (-1: random)", elem_id="seed")
                        steps = gr.Slider(
                            2, lim.max_steps, value=base.num_timesteps, step=1, label="Timesteps"
                        )
                    with gr.Row():
                        height = gr.Slider(value=min(base.height, lim.max_side), label="Height", **side)
                        width = gr.Slider(value=min(base.width, lim.max_side), label="Width", **side)
                    with gr.Accordion("Advanced", open=False):
                        with gr.Row():
                            text_scale = gr.Number(value=base.cfg_text_scale, label="CFG text scale")
                            img_scale = gr.Number(value=base.cfg_img_scale, label="CFG image scale")
                            shift = gr.Number(value=base.timestep_shift, label="Timestep shift")
                        with gr.Row():
                            lo = gr.Number(value=base.cfg_interval[0], label="CFG interval start")
                            hi = gr.Number(value=base.cfg_interval[1], label="CFG interval end")
                        with gr.Row():
                            renorm = gr.Dropdown(
                                list(RENORM_TYPES), value=base.cfg_renorm_type, label="CFG renorm"
                            )
                            renorm_min = gr.Number(value=base.cfg_renorm_min, label="CFG renorm min")
                        cache = gr.Dropdown(
                            list(CACHE_MODES),
                            value=base.cache,
                            label="Step cache (taylorseer: about half the network evaluations)",
                        )
                    go = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                with gr.Column():
                    image = gr.Image(
                        label="Output", type="pil", format="png", interactive=False, elem_id="output"
                    )
                    info = gr.Textbox(label="Settings", lines=3, interactive=False, elem_id="settings")
            examples = [[[os.path.join(EXAMPLE_DIR, f) for f in files], text] for files, text in EXAMPLES]
            gr.Examples(examples, inputs=[refs, instruction], label="Examples (the shipped references)")
            go.click(
                on_generate,
                [
                    refs,
                    instruction,
                    seed,
                    height,
                    width,
                    steps,
                    text_scale,
                    img_scale,
                    lo,
                    hi,
                    renorm,
                    renorm_min,
                    shift,
                    cache,
                ],
                [image, info],
                api_name="generate",
                concurrency_limit=server.batcher.max_queue,
            )
        with gr.Tab("Understand"):
            with gr.Row():
                with gr.Column():
                    und_files = gr.File(
                        file_count="multiple",
                        file_types=["image"],
                        label="Images (0 to 4)",
                        elem_id="und-images",
                    )
                    question = gr.Textbox(label="Question", lines=2, elem_id="question")
                    with gr.Row():
                        think = gr.Checkbox(label="Think first", value=False)
                        max_new = gr.Slider(1, lim.max_new_tokens, value=256, step=1, label="Max new tokens")
                    ask = gr.Button("Answer", variant="primary", elem_id="answer-btn")
                with gr.Column():
                    answer = gr.Textbox(label="Answer", lines=6, interactive=False, elem_id="answer")
                    note = gr.Markdown(label="Note", elem_id="answer-note")
            ask.click(
                on_understand,
                [und_files, question, think, max_new],
                [answer, note],
                api_name="understand",
                concurrency_limit=server.batcher.max_queue,
            )
    demo.queue(max_size=server.batcher.max_queue, default_concurrency_limit=server.batcher.max_queue)
    return demo


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_front_door_args(p, port=7860)
    p.add_argument(
        "--share", action="store_true", help="also make a public gradio.live link (off by default)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        log.error("the web demo needs Gradio: pip install -r requirements-app.txt")
        return 2
    try:
        pipe, limits, batcher = load_served_model(args)
    except USER_ERRORS as e:
        return report_user_error(log, e, args.debug)
    demo = build_app(DemoServer(pipe, batcher, limits))
    if args.host not in ("127.0.0.1", "localhost"):
        log.warning("binding to %s: anyone who can reach this machine can use the demo", args.host)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            max_file_size=f"{args.max_upload_mb:g}mb",
            allowed_paths=[EXAMPLE_DIR],
            ssr_mode=False,
            show_error=True,
        )
    finally:
        batcher.close()
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
