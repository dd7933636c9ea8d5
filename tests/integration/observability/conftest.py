"""The proxy tests' fixtures (in-test backends, an in-process proxy on uvloop) serve here too."""

from tests.integration.proxy.conftest import backends, pytest_asyncio_loop_factories, start_proxy

__all__ = ["backends", "pytest_asyncio_loop_factories", "start_proxy"]
