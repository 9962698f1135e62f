"""What the tests import: starting and ending real brokers, raw HTTP on a socket, ASGI calls,
a redis-server, the clients' test harness, and the list of the predecessor's defects.

Plain functions and classes only: fixtures live in the conftest.py of the folder that uses
them (the root one when several folders do), so that no test module imports or re-exports a
fixture.
"""
