"""A FastAPI app for the multi-worker tests (uvicorn --workers imports it by name)."""

from __future__ import annotations

import os

import fastapi

from ratekeeper import PolicyBuilder
from ratekeeper.integrations.fastapi import RateKeeper, exempt, limit

app = fastapi.FastAPI()
RateKeeper(
    app,
    PolicyBuilder().identity("api_key").limit("api", "100/minute").apply("api").build(),
    store=os.environ.get("RATEKEEPER_TEST_STORE", "memory://"),
)


@app.get("/media")
@limit("5/minute")
async def media() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.get("/health")
@exempt
async def health() -> str:
    return "ok"
