"""The states' API: 401 without a valid token, 404 for workers a state may not see, 403 for
another state's districts, the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from eshram_locator.avro_codec import load_codec
from eshram_locator.domain.model import (
    ChangeType,
    District,
    Evidence,
    Location,
    LocationChanged,
    Migration,
    MigrationFlow,
)
from eshram_locator.domain.rules import location_event_id
from eshram_locator.settings import REPO_ROOT
from eshram_locator.topics import TopicNames
from streams.api import ApiConfig, build_api
from streams.app import StreamsApp, StreamsConfig
from streams.projection import Granularity, StateProjection
from streams.residents import Residents
from streams.routing import SharingProfile
from streams.worker_view import WorkerView

UP_TOKEN = "token-of-uttar-pradesh"
BIHAR_TOKEN = "token-of-bihar-state"
MH_TOKEN = "token-of-maharashtra"
TOKENS = {UP_TOKEN: 9, BIHAR_TOKEN: 10, MH_TOKEN: 27}


def moved(uan: str, previous: Location, current: Location, month: str) -> LocationChanged:
    return LocationChanged(
        event_id=location_event_id(uan, month, current.district, ChangeType.MOVED),
        change_type=ChangeType.MOVED,
        uan=uan,
        previous_location=previous,
        current_location=current,
        effective_month=month,
        detected_at=datetime(2025, 5, 1, tzinfo=UTC),
        migration=Migration.INTER_STATE,
        home_state_lgd=previous.state_lgd,
        evidence=Evidence(2, 2, month, month, ()),
        confidence=1.0,
        present_address_matches=False,
        supersedes_event_id=None,
    )


BIHAR, DELHI, MUMBAI, UP = (
    Location(10, 1001),
    Location(7, 701),
    Location(27, 2701, 5),
    Location(9, 901),
)


def view(uan: str, home: Location, consent: bool, *moves: tuple[Location, Location]) -> WorkerView:
    out = WorkerView(uan, 0).registered(SharingProfile(consent, home.state_lgd), home.district)
    for index, (previous, current) in enumerate(moves):
        out = out.with_change(moved(uan, previous, current, f"2025-0{index + 1}"))
    return out


class FakeQueries:
    def __init__(self, views: list[WorkerView]) -> None:
        self.views = {v.uan: v for v in views}
        self.residents = Residents()
        self.residents.rebuild(views)

    def worker(self, uan: str) -> WorkerView | None:
        return self.views.get(uan)

    def residents_of(self, district: District, after: str | None, limit: int) -> list[WorkerView]:
        return [self.views[u] for u in self.residents.page(district, after, limit)]

    def flows(self, month: str) -> list[MigrationFlow]:
        return [MigrationFlow(month, 9, 901, 27, 2701, 3, 1)]


BIHARI_IN_DELHI = "100000000001"  # never touched UP
UP_IN_MUMBAI = "100000000002"
UP_IN_MUMBAI_NO_CONSENT = "100000000003"
VIEWS = [
    view(BIHARI_IN_DELHI, BIHAR, True, (BIHAR, DELHI)),
    view(UP_IN_MUMBAI, UP, True, (UP, MUMBAI)),
    view(UP_IN_MUMBAI_NO_CONSENT, UP, False, (UP, MUMBAI)),
    *(view(f"2000000000{n:02d}", UP, True, (UP, MUMBAI)) for n in range(5)),
]


def with_client(test: Callable[[TestClient[Any, Any]], Awaitable[None]]) -> None:
    api = build_api(
        FakeQueries(VIEWS), ApiConfig(TOKENS, {27: StateProjection(Granularity.DISTRICT)})
    )

    async def run() -> None:
        async with TestClient(TestServer(api)) as client:
            await test(client)

    asyncio.run(run())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_missing_or_wrong_token_is_401() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        response = await client.get(f"/v1/workers/{UP_IN_MUMBAI}")
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        response = await client.get(f"/v1/workers/{UP_IN_MUMBAI}", headers=bearer("nope"))
        assert response.status == 401
        response = await client.get("/v1/flows/2025-01", headers={"Authorization": UP_TOKEN})
        assert response.status == 401

    with_client(check)


def test_state_09_cannot_read_a_worker_who_never_touched_09() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        denied = await client.get(f"/v1/workers/{BIHARI_IN_DELHI}", headers=bearer(UP_TOKEN))
        unknown = await client.get("/v1/workers/999999999999", headers=bearer(UP_TOKEN))
        assert denied.status == unknown.status == 404
        assert await denied.json() == await unknown.json()  # indistinguishable
        allowed = await client.get(f"/v1/workers/{BIHARI_IN_DELHI}", headers=bearer(BIHAR_TOKEN))
        assert allowed.status == 200
        body = await allowed.json()
        assert body["current_location"]["state_lgd"] == 7
        assert [h["change_type"] for h in body["history"]] == ["MOVED"]

    with_client(check)


def test_home_and_current_states_see_a_consenting_worker_only() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        for token in (UP_TOKEN, MH_TOKEN):
            response = await client.get(f"/v1/workers/{UP_IN_MUMBAI}", headers=bearer(token))
            assert response.status == 200
            body = await response.json()
            assert body["current_location"]["subdistrict_lgd"] is None  # district granularity
        hidden = await client.get(
            f"/v1/workers/{UP_IN_MUMBAI_NO_CONSENT}", headers=bearer(UP_TOKEN)
        )
        assert hidden.status == 404

    with_client(check)


def test_district_listing_is_paginated_and_own_state_only() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        other = await client.get("/v1/districts/9/901/workers", headers=bearer(MH_TOKEN))
        assert other.status == 403
        seen: list[str] = []
        after = None
        for _ in range(10):
            query = {"limit": "2"} | ({"after": after} if after else {})
            page = await client.get(
                "/v1/districts/27/2701/workers", headers=bearer(MH_TOKEN), params=query
            )
            assert page.status == 200
            body = await page.json()
            seen += [worker["uan"] for worker in body["workers"]]
            after = body["next_after"]
            if after is None:
                break
        expected = sorted([UP_IN_MUMBAI, *(f"2000000000{n:02d}" for n in range(5))])
        assert seen == expected  # every consenting resident once, never the non-consenting

    with_client(check)


def test_flows_and_openapi() -> None:
    async def check(client: TestClient[Any, Any]) -> None:
        flows = await client.get("/v1/flows/2025-03", headers=bearer(BIHAR_TOKEN))
        assert (await flows.json())["flows"][0]["workers"] == 3
        bad = await client.get("/v1/flows/March", headers=bearer(BIHAR_TOKEN))
        assert bad.status == 400
        spec = await client.get("/openapi.json")
        assert spec.status == 200
        document = await spec.json()
        assert document["openapi"].startswith("3.")
        assert set(document["paths"]) == {
            "/v1/workers/{uan}",
            "/v1/districts/{state}/{district}/workers",
            "/v1/flows/{month}",
        }

    with_client(check)


def test_streams_app_builds_on_memory_tables(tmp_path: Path) -> None:
    app = StreamsApp(
        StreamsConfig(
            app_id="unit-streams",
            bootstrap_servers="127.0.0.1:1",
            names=TopicNames("u."),
            partitions=3,
            store="memory://",
            data_dir=tmp_path,
        ),
        load_codec(REPO_ROOT / "avro", None),
    )
    assert str(app.app.conf.store) == "memory:"
    assert app.workers.partitions == app.flow_pairs.partitions == 3
    assert app.worker("100000000001") is None
