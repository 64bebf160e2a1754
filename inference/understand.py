"""Answer a question about images (VQA) with the understanding expert.

python -m inference.understand --model_path ckpts/Scone --images photo.png --question "What is this?"
"""

from __future__ import annotations

import argparse
import logging
import sys

from inference.cli_common import (
    USER_ERRORS,
    add_model_args,
    add_think_args,
    check_inputs,
    default_model_path,
    load_pipeline,
    report_user_error,
)

log = logging.getLogger("scone.understand")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--images", nargs="*", default=[])
    p.add_argument("--question", required=True)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--do_sample", action="store_true")
    p.add_argument("--temperature", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=None)
    add_think_args(p, "answer (the reasoning counts against --max_new_tokens)", budget=False)
    args = p.parse_args(argv)
    try:
        args.model_path = default_model_path(args.model_path)
        check_inputs(args.images, args.question, "--question", None, None)
        pipe = load_pipeline(args)
        ans = pipe.understand(
            images=args.images,
            prompt=args.question,
            max_new_tokens=args.max_new_tokens,
            do_sample=args.do_sample,
            temperature=args.temperature,
            seed=args.seed,
            think=args.think,
        )
    except USER_ERRORS as e:
        return report_user_error(log, e, args.debug)
    print(ans.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
