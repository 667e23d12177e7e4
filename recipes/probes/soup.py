"""Probe of docs/results.md ("Averaging three seeds"): a uniform model soup - the element-wise mean of the weights
of several models trained from the same base (here: one recipe, three seeds) - saved as a new model folder that
`llm-embedder eval` reads like any trained model (its task table and pooling are the first model's).

    .venv/bin/python recipes/probes/soup.py runs/six-task/models/soup3 SEED0_MODEL SEED1_MODEL SEED2_MODEL  # seconds
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def soup(out: Path, models: list[Path]) -> None:
    """Average ``models``' weights into ``out`` (a copy of the first model's folder with the mean weights)."""
    states = [load_file(str(m / "model.safetensors")) for m in models]
    if any(state.keys() != states[0].keys() for state in states):
        sys.exit("the models do not have the same weights: a soup needs one architecture from one base")
    mean = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            mean[name] = torch.stack([s[name].double() for s in states]).mean(0).to(first.dtype).contiguous()
        elif all(torch.equal(s[name], first) for s in states):
            mean[name] = first  # integer buffers (position ids) are the same in every model
        else:
            sys.exit(f"integer weight {name} differs between the models: they do not share a base")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(models[0], out, ignore=shutil.ignore_patterns("checkpoints"))
    save_file(mean, str(out / "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: soup.py OUT MODEL MODEL [MODEL ...]")
    soup(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
    print(f"averaged {len(sys.argv) - 2} models into {sys.argv[1]}")
