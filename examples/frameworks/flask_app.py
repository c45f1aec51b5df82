from flask import Flask, request

from ratekeeper.integrations.flask import RateKeeper

app = Flask(__name__)
app.config["RATEKEEPER_POLICY"] = {"apply": ["100/minute"]}
rk = RateKeeper(app)


@app.get("/search")
@rk.limit("5/minute", key=lambda request: request.remote_addr)
def search() -> dict[str, str]:
    return {"q": request.args.get("q", "")}
