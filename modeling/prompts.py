"""The model's fixed conversation texts: the two think-mode system prompts.

One definition for inference (``SconePipeline`` prefixes them in think mode) and for training data that
teaches think mode (``data/s2i_dataset.S2IThinkDataset``), so a model is trained on exactly the prompt it is
later given. Our own wording (upstream's exact text is not reproduced here); ``think_prompt=`` overrides
them at inference.
"""

THINK_PROMPT_GENERATE = (
    "Before producing the image, plan it: write your reasoning about the requested content, layout and "
    "details between <think> and </think>, then generate the image."
)
THINK_PROMPT_UNDERSTAND = (
    "Before answering, reason step by step between <think> and </think>, then give the final answer."
)
