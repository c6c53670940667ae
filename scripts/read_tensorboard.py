"""Reads a run folder with TensorBoard's own event-file reader and prints its scalars as one JSON object,
{tag: [[step, value], ...]}, steps in the order TensorBoard returns them. Used by loft's tests as the
independent reader of the event files loft writes.

usage: read_tensorboard.py RUN_DIR   (.cache/venv-tb/bin/python; scripts/fetch.sh tensorboard makes it)
"""

import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: read_tensorboard.py RUN_DIR")
    # size_guidance 0 keeps every point; the default samples scalars down to 10,000 per tag.
    acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    print(json.dumps(scalars))


if __name__ == "__main__":
    main()
