"""The API docs: `/docs` and `/redoc` render with no internet, and the OpenAPI document explains every
field, shows example starts and lists the accepted hyperparameters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

from fastapi.testclient import TestClient

from agents.hyperparameters import HYPERPARAMETER_MODELS
from api.schemas import StartTrainingRequest
from tests.browser import launch_chromium, screenshot
from tests.conftest import LiveService

LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}
# ReDoc's sidebar always asks for its maker's logo; the image hides itself when that fails (offline).
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def properties(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property of every object schema in `schema`, nested ones included, with its path."""
    if isinstance(schema, dict):
        for name, prop in schema.get("properties", {}).items():
            yield f"{where}.{name}", prop
        for key, value in schema.items():
            yield from properties(value, f"{where}.{key}" if key != "properties" else where)
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            yield from properties(item, f"{where}[{index}]")


def test_every_field_of_the_openapi_document_has_a_description(module_client: TestClient) -> None:
    document = module_client.get("/openapi.json").json()
    fields = dict(properties(document["components"]["schemas"], "components"))
    assert len(fields) > 100
    undescribed = sorted(path for path, prop in fields.items() if not prop.get("description"))
    assert undescribed == []


def test_the_start_request_has_examples_and_lists_each_algorithms_hyperparameters(
    module_client: TestClient,
) -> None:
    start = module_client.get("/openapi.json").json()["components"]["schemas"]["StartTrainingRequest"]

    examples = start["examples"]
    assert {"algorithm": "PPO", "total_episodes": 1000, "timesteps_per_episode": 2048, "maze_size": 10} in (
        examples
    )
    dqn = next(example for example in examples if example["algorithm"] == "DQN")
    assert dqn["hyperparameters"]
    for example in examples:  # each one is a valid request as it stands
        StartTrainingRequest.model_validate(example)
    options = {option["title"]: option for option in start["properties"]["hyperparameters"]["anyOf"]}
    for algorithm, model in HYPERPARAMETER_MODELS.items():
        option = options[model.__name__]
        assert set(option["properties"]) == set(model.model_fields), algorithm
        assert option["additionalProperties"] is False


def test_docs_pages_render_with_every_outside_request_blocked(
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service()
    outside: list[str] = []

    def only_loopback(route: Any) -> None:
        if urlparse(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with launch_chromium() as browser:
        page = browser.new_page()
        page.route("**/*", only_loopback)
        page.goto(f"{service.base_url}/docs")
        page.locator(".opblock-summary-path", has_text="/training/start").first.wait_for(timeout=30_000)
        assert page.locator(".opblock").count() >= 10
        screenshot(page, "docs-offline")
        assert outside == []

        page.goto(f"{service.base_url}/redoc")
        page.get_by_role("heading", name="Start (or queue) a training run").wait_for(timeout=30_000)
        screenshot(page, "redoc-offline")
    assert set(outside) <= {REDOC_LOGO}
