"""``overdrive merge-weights CHECKPOINT_DIR OUTPUT_PATH``: one full weights file from a sharded FSDP checkpoint.

Accelerate's ``accelerate merge-weights`` command with the same arguments. torch is imported only when it runs.

Example:
    >>> merge_command_parser().parse_args(["ckpt", "out"]).unsafe_serialization
    False
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from . import command_parser

__all__ = ["merge_command_parser", "merge_main"]

DESCRIPTION = "Merge the shards of an FSDP sharded checkpoint into one model.safetensors (no process group needed)."


def merge_command_parser(subparsers: Any = None) -> argparse.ArgumentParser:
    """The ``merge-weights`` parser (a sub-parser of ``overdrive`` when ``subparsers`` is given).

    Example:
        >>> merge_command_parser().prog
        'overdrive merge-weights'
    """
    parser = command_parser(subparsers, "merge-weights", DESCRIPTION)
    parser.add_argument("checkpoint_directory", help="the save_state folder (or its pytorch_model_fsdp_0/ folder)")
    parser.add_argument("output_path", help="folder for model.safetensors (created if missing)")
    parser.add_argument("--unsafe_serialization", action="store_true",
                        help="write pytorch_model.bin (torch.save) instead of safetensors")
    parser.add_argument("--remove_checkpoint_dir", action="store_true",
                        help="delete the sharded folder once the merged weights are written")
    return parser


def merge_main(argv: Sequence[str]) -> int:
    """Run ``overdrive merge-weights`` with ``argv``; 0 on success, 2 with a message for bad input.

    Example:
        >>> merge_main(["no/such/folder", "out"])
        2
    """
    args = merge_command_parser().parse_args(list(argv))
    from ..utils.fsdp_utils import merge_fsdp_weights

    try:
        written = merge_fsdp_weights(args.checkpoint_directory, args.output_path,
                                     safe_serialization=not args.unsafe_serialization,
                                     remove_checkpoint_dir=args.remove_checkpoint_dir)
    except ValueError as err:
        print(f"overdrive merge-weights: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(written)} to {args.output_path}")
    return 0
