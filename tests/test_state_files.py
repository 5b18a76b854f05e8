"""Weight files written by qamdt.checkpoints: round trip, tied tensors, the same bytes."""

import safetensors
import torch

from qamdt.checkpoints import read_state_file, save_state_file


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(7, 5)
        self.head = torch.nn.Linear(5, 7, bias=False)
        self.head.weight = self.embed.weight  # one tensor under two names


def test_state_files_round_trip_with_ties_and_are_the_same_bytes_every_time(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    paths = [tmp_path / f"w{i}.safetensors" for i in range(5)]
    for path in paths:
        save_state_file(model, path, metadata={"b": "2", "a": "1", "c": "3"})
    assert len({path.read_bytes() for path in paths}) == 1
    state = read_state_file(paths[0])
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with safetensors.safe_open(str(paths[0]), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt" and metadata["a"] == "1"
    assert '"head.weight": "embed.weight"' in metadata["aliases"]
