from fastapi import FastAPI

from ratekeeper import PolicyBuilder
from ratekeeper.integrations.fastapi import RateKeeper, limit

app = FastAPI()
RateKeeper(app, PolicyBuilder().limit("api", "100/minute").apply("api").build())


@app.get("/search")
@limit("5/minute", key=lambda request: request.client.host)
async def search(q: str = "") -> dict[str, str]:
    return {"q": q}
