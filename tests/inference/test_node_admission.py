"""The node's memory budget (RELIGHT_NODE_LATENT_BUDGET): requests are admitted first come,
first served while their rows × latent pixels fit; one alone over the budget is refused."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import pytest

from inference.node.admission import (
    DEFAULT_LATENT_BUDGET,
    LatentBudget,
    RequestTooLarge,
    request_cost,
)
from inference.node.app import create_node_app
from inference.node.settings import NodeSettings
from relight.core.params import RelightParams
from tests.conftest import example_bytes


def test_the_cost_is_rows_times_the_larger_pass_latent_pixels() -> None:
    # Segmind's defaults: 512x640 → 768x960 after highres 1.5; guidance doubles the rows.
    assert request_cost(RelightParams(prompt="a")) == 2 * (768 // 8) * (960 // 8)
    assert request_cost(RelightParams(prompt="a", cfg=1, highres_scale=1)) == 64 * 80
    worst = RelightParams(prompt="a", width=1024, height=1024, highres_scale=3, number_of_images=12)
    assert request_cost(worst) == 12 * 2 * 384 * 384
    # Every valid request fits the default budget alone.
    assert request_cost(worst) <= DEFAULT_LATENT_BUDGET


def test_requests_that_together_exceed_the_budget_run_one_after_the_other() -> None:
    budget = LatentBudget(100)
    order: list[str] = []
    first_in = threading.Event()
    release_first = threading.Event()

    def run(name: str, cost: int, hold: threading.Event | None) -> None:
        with budget.hold(cost):
            order.append(f"{name} in")
            if hold is not None:
                first_in.set()
                hold.wait(10)
            order.append(f"{name} out")

    first = threading.Thread(target=run, args=("first", 60, release_first))
    first.start()
    assert first_in.wait(10)
    second = threading.Thread(target=run, args=("second", 60, None))
    second.start()
    # A later, smaller request that would fit waits its turn too (first come, first served).
    while budget.waiting < 1:
        time.sleep(0.01)
    third = threading.Thread(target=run, args=("third", 30, None))
    third.start()
    while budget.waiting < 2:
        time.sleep(0.01)
    time.sleep(0.1)
    assert order == ["first in"]
    release_first.set()
    for thread in (first, second, third):
        thread.join(10)
    assert order[:3] == ["first in", "first out", "second in"]
    assert order.index("third in") > order.index("second in")
    assert budget.used == 0
    assert budget.waiting == 0


def test_a_request_alone_over_the_budget_is_refused_at_once() -> None:
    budget = LatentBudget(100)
    with pytest.raises(RequestTooLarge) as refused, budget.hold(101):
        pass
    assert (refused.value.status_code, refused.value.code) == (507, "request_too_large")
    assert budget.waiting == 0


def test_a_waiting_request_gives_up_when_its_check_raises() -> None:
    budget = LatentBudget(10)

    def gone() -> None:
        raise TimeoutError("the client went away")

    with budget.hold(10), pytest.raises(TimeoutError), budget.hold(5, check=gone):
        pass
    assert budget.waiting == 0
    assert budget.used == 0


async def test_the_node_refuses_a_request_over_its_budget_with_507() -> None:
    app = create_node_app(
        NodeSettings(engine="classic", redis_url="", latent_budget=1000),
        node_id="small-node",
        url="http://small-node",
    )
    payload = {
        "image": base64.b64encode(example_bytes()).decode(),
        "params": {"prompt": "a cat"},
        "seed": 3,
    }
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            response = await client.post("/v1/relight", json=payload, timeout=60)
            health = await client.get("/healthz")
    assert response.status_code == 507, response.text
    assert response.json()["code"] == "request_too_large"
    assert health.json()["in_flight"] == 0  # refused before it took a slot
