"""CUDA-graph bookkeeping, on the CPU with a stand-in capture: one capture at a time in the
process whichever model captures, batch sizes bucketed, large latents eager."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from inference.iclight.cuda_graphs import CudaGraphUNet, _Graph, batch_bucket


class Doubling(torch.nn.Module):
    """A UNet stand-in whose prediction is its input doubled."""

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, **_: object
    ) -> tuple[torch.Tensor]:
        return (sample * 2,)


class FakeCaptures(CudaGraphUNet):
    """Captures that take a while and count how many run at once (across instances); replays
    that run the module eagerly."""

    running = 0
    most_at_once = 0
    counting = threading.Lock()

    def __init__(self) -> None:
        super().__init__(Doubling(), max_latent_pixels=32 * 32)
        self.captured: list[tuple[int, ...]] = []

    def _capture(
        self, sample: torch.Tensor, timestep: torch.Tensor, hidden_states: torch.Tensor
    ) -> _Graph:
        with FakeCaptures.counting:
            FakeCaptures.running += 1
            FakeCaptures.most_at_once = max(FakeCaptures.most_at_once, FakeCaptures.running)
        time.sleep(0.2)
        with FakeCaptures.counting:
            FakeCaptures.running -= 1
        self.captured.append(tuple(sample.shape))
        return _Graph(None, sample, timestep, hidden_states, sample)  # type: ignore[arg-type]

    def _replay(
        self,
        graph: _Graph,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        return self._run(sample, timestep, hidden_states)


def inputs(rows: int, side: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.randn(rows, 4, side, side), torch.tensor(10), torch.randn(rows, 77, 16)


def test_one_capture_at_a_time_across_models() -> None:
    fc, fbc = FakeCaptures(), FakeCaptures()
    FakeCaptures.most_at_once = 0
    threads = [
        threading.Thread(target=model, args=inputs(rows)) for model in (fc, fbc) for rows in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(fc.captured) == len(fbc.captured) == 2
    assert FakeCaptures.most_at_once == 1


@pytest.mark.parametrize(
    ("rows", "bucket"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8), (9, 16), (24, 32)]
)
def test_batch_sizes_are_bucketed_to_powers_of_two(rows: int, bucket: int) -> None:
    assert batch_bucket(rows) == bucket


def test_batches_in_one_bucket_share_a_graph_and_get_their_own_rows() -> None:
    model = FakeCaptures()
    for rows in (5, 6, 7, 8, 3, 4):
        sample, timestep, hidden = inputs(rows)
        out = model(sample, timestep, hidden)
        assert torch.equal(out, sample * 2)  # the padding rows are dropped
    assert [shape[0] for shape in model.captured] == [8, 4]


def test_large_latents_run_without_a_graph() -> None:
    model = FakeCaptures()
    sample, timestep, hidden = inputs(2, side=40)  # 40×40 latents > 32×32
    assert torch.equal(model(sample, timestep, hidden), sample * 2)
    assert model.captured == []
    assert model.shapes == []
