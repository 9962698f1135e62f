"""`python -m ephemeral_broker.api.openapi` prints the OpenAPI document that `openapi.json` must
equal."""

from __future__ import annotations

import sys

import orjson

from ephemeral_broker.api.app import create_app
from ephemeral_broker.settings import BrokerSettings


def render() -> bytes:
    # Defaults only: the document must not depend on the environment it is generated in.
    settings = BrokerSettings.model_construct()
    app = create_app(settings)
    return orjson.dumps(app.openapi(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
