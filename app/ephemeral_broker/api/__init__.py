"""HTTP routes, one router per resource: parse, call one store method, shape the answer."""
