"""Files the project writes: the usual permissions, whatever the writer.

``safetensors.torch.save_file`` and ``tempfile.mkstemp`` both create files readable by their owner only
(0600), while everything else a user's tools write gets the umask's mode (usually 0644). A weights file or
a benchmark image that a colleague or a web server cannot read is a surprise, so every such file goes
through :func:`give_default_mode`, and safetensors files are written with :func:`save_safetensors`.
"""

from __future__ import annotations

import os

import torch

# The process's umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def give_default_mode(path: str | os.PathLike) -> None:
    """chmod ``path`` to what ``open(path, "w")`` would have created: 0666 less the umask."""
    os.chmod(path, 0o666 & ~_UMASK)


def save_safetensors(
    state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """``safetensors.torch.save_file`` (contiguous tensors, ``{"format": "pt"}`` by default) with the
    default file mode."""
    from safetensors.torch import save_file

    save_file(
        {k: v.detach().contiguous() for k, v in state.items()}, path, metadata=metadata or {"format": "pt"}
    )
    give_default_mode(path)
