"""The metrics writer: JSONL lines, and one TensorBoard run per member (read back from the event files)."""
import json
import struct

from tensorboardX.proto import event_pb2

from energyformer.metrics import MetricsWriter


def _scalars(run_directory) -> dict:
  """``{tag: [(step, value), ...]}`` of the event files in ``run_directory`` (TFRecord framing: length, its CRC,
  the serialised ``Event``, its CRC)."""
  found = {}
  for path in sorted(run_directory.glob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack_from("<Q", data, offset)
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        found.setdefault(value.tag, []).append((event.step, round(value.simple_value, 6)))
  return found


def test_each_member_is_its_own_tensorboard_run(tmp_path):
  """Two members' metrics: two runs ``tensorboard/<member>/`` with the same tags (so TensorBoard overlays them),
  an unprefixed scalar in ``tensorboard/`` itself; the JSONL lines keep the member in the name."""
  with MetricsWriter(tmp_path) as writer:
    for step in (1, 2):
      writer.write(step, {"train/loss": 1.0 / step}, "seed=0")
      writer.write(step, {"train/loss": 2.0 / step}, "seed=1")
    writer.write(2, {"val/accuracy": 0.5})
  runs = tmp_path / "tensorboard"
  assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["seed=0", "seed=1"]
  assert _scalars(runs / "seed=0") == {"train/loss": [(1, 1.0), (2, 0.5)]}
  assert _scalars(runs / "seed=1") == {"train/loss": [(1, 2.0), (2, 1.0)]}
  assert _scalars(runs) == {"val/accuracy": [(2, 0.5)]}
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[0] == {"step": 1, "seed=0/train/loss": 1.0} and lines[-1] == {"step": 2, "val/accuracy": 0.5}
