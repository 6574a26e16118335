"""The protocol registry: every registered protocol is pinned by a recorded
response of its own, routed to it by its recorded URL and read to the usage the
recording states; and no two protocols claim one route."""

from urllib.parse import urlsplit

import pytest

from taskmeter import protocols
from taskmeter.proxy.routing import classify
from taskmeter.recorder.parse import BodyParser
from tests.fixtures import ALL as FIXTURES
from tests.test_parsers import USAGE_FIELDS, expected_usage


def _recorded_url(fixture) -> str | None:
    """The recorded request's path, or None where the recorder kept only a description."""
    uri = fixture.meta["uri"]
    return None if " " in uri or "{" in uri else urlsplit(uri).path


def _usage_pinned(fixture) -> bool:
    """A response that states usage, recorded with its normalised counts and its URL."""
    return fixture.meta["normalized"] is not None and _recorded_url(fixture) is not None


@pytest.mark.parametrize("protocol", protocols.ALL, ids=lambda protocol: protocol.name)
def test_every_registered_protocol_has_a_recorded_response_that_reads_to_its_usage(protocol):
    recorded = [fixture for fixture in FIXTURES if fixture.protocol == protocol.name and _usage_pinned(fixture)]
    assert recorded, f"no recorded response in tests/recorded/ pins protocol {protocol.name!r}: record one"
    for fixture in recorded:
        assert classify(fixture.meta["method"], _recorded_url(fixture)).protocol == protocol.name, fixture.name
        parser = BodyParser(protocol.name, fixture.content_type)
        parser.feed(fixture.body)
        result = parser.close()
        assert {field: getattr(result.usage, field) for field in USAGE_FIELDS} == expected_usage(fixture), fixture.name


def test_every_recorded_response_speaks_a_registered_protocol():
    assert {fixture.protocol for fixture in FIXTURES} <= {protocol.name for protocol in protocols.ALL}


def test_no_two_protocols_claim_one_route():
    names = [protocol.name for protocol in protocols.ALL]
    assert len(names) == len(set(names))
    verbs = [verb for protocol in protocols.ALL for verb in protocol.verbs]
    assert len(verbs) == len(set(verbs))
    endings = [(ending, protocol.name) for protocol in protocols.ALL for ending in protocol.paths]
    for ending, owner in endings:
        # A path that ends with another protocol's ending would be read as both.
        assert ending == ending.lower() and ending.startswith("/")
        assert not [other for other, name in endings if name != owner and other.endswith(ending)], ending
