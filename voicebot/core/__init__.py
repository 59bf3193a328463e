"""Sans-I/O core: pure logic, no asyncio, no sockets, no model calls.

Each module takes bytes or values in and gives values or events out, so all of it is tested
without an event loop (tests/unit). Nothing is re-exported here on purpose: importing one
core module (say, events) should not pull in numpy and soxr through this package.
"""
