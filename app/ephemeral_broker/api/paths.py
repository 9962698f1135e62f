"""The `name` path convertor, for a key, pool or worker id that ends a route's path.

Starlette's `path` convertor is `.*` followed by `$`, and `$` also matches before a final
newline: `/v1/keys/a%0A` would address key "a". This one captures the whole remainder with
DOTALL, so such a name reaches the name rules and is refused as invalid_key; and unlike
`[^/]+` it also captures an encoded `/`, so that is refused by the rules too instead of
becoming a "no such endpoint".
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class NameConvertor(Convertor[str]):
    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("name", NameConvertor())
