"""Saves an image panel logged to TensorBoard as a PNG file (e.g. for a paper or a README).

    .venv/bin/python scripts/export_tensorboard_image.py outputs/<run> val/batch_00/grid panel.png [--epoch N]

Without --epoch the last logged epoch is taken.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("tag")
    parser.add_argument("out", type=Path)
    parser.add_argument("--epoch", type=int, default=None)
    args = parser.parse_args()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(args.run_dir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    if args.tag not in acc.Tags()["images"]:
        print(f"error: no image tag {args.tag!r} in {args.run_dir / 'tensorboard'}", file=sys.stderr)
        return 2
    events = acc.Images(args.tag)
    if args.epoch is not None:
        events = [e for e in events if e.step == args.epoch]
        if not events:
            print(f"error: {args.tag!r} has no image at epoch {args.epoch}", file=sys.stderr)
            return 2
    event = events[-1]
    args.out.write_bytes(event.encoded_image_string)
    print(f"wrote {args.out} ({event.width}x{event.height}, epoch {event.step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
