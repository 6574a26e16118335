"""The proxies the tests start on fresh folders begin with copies of a CA and of a migrated
database made once per test process (tests/proxy_harness.py): each proxy's own files,
which it uses as it uses those it makes, and nothing a test made itself is replaced."""

import sqlite3
import ssl
import stat

import httpx
import pytest

from taskmeter.store import migrations
from tests import migrated
from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import RunningProxy, as_after_a_first_start, write_config
from tests.tls import make_server_tls

FIXTURE = {f.name: f for f in ALL}
CHAT = "/v1/chat/completions"
TLS_HOST = "127.0.0.2"


def _schema(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()


def _call_through(proxy: RunningProxy, port: int, ca_file) -> str:
    """A call in HTTPS_PROXY mode that trusts only `ca_file`: the proxy's certificate for the upstream must be signed by it."""
    response = httpx.post(
        f"https://{TLS_HOST}:{port}{CHAT}",
        json={"model": "gpt-4o-mini", "messages": []},
        proxy=proxy.origin,
        verify=ssl.create_default_context(cafile=ca_file),
    )
    assert response.status_code == 200
    return response.headers["x-meter-interaction-id"]


@pytest.mark.e2e
def test_each_proxy_gets_its_own_copy_of_the_ca_and_database_and_a_fresh_one_makes_its_own(tmp_path):
    context, upstream_ca = make_server_tls(tmp_path, TLS_HOST)
    with FakeUpstream(tls_context=context, host=TLS_HOST) as upstream:
        upstream.routes[CHAT] = Scenario(body=FIXTURE["openai/chat_nonstream_toolcall"].body)
        proxies = {}
        for name in ("first", "second", "fresh"):
            folder = tmp_path / name
            folder.mkdir()
            config = write_config(
                folder / "config.toml",
                folder / "ca",
                {"corp": f"https://{TLS_HOST}:{upstream.port}"},
                upstream_ca=str(upstream_ca),
            )
            proxies[name] = RunningProxy(config, folder / "meter.db", fresh=name == "fresh")
        try:
            ca = {name: proxy.config.parent / "ca" / "mitmproxy-ca-cert.pem" for name, proxy in proxies.items()}
            calls = {name: _call_through(proxy, upstream.port, ca[name]) for name, proxy in proxies.items()}
            # The copies are the template's CA, which the proxies sign with; the fresh proxy made another.
            assert ca["first"].read_bytes() == ca["second"].read_bytes() != ca["fresh"].read_bytes()
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                _call_through(proxies["fresh"], upstream.port, ca["first"])
            for name, proxy in proxies.items():
                assert [row["id"] for row in proxy.rows(wait_for=1)] == [calls[name]]  # stored once, in its own database
        finally:
            for proxy in proxies.values():
                assert proxy.stop() == 0
    files = [path for proxy in proxies.values() for path in (proxy.db_path, *proxy.config.parent.glob("ca/mitmproxy-*"))]
    assert len({(path.stat().st_dev, path.stat().st_ino) for path in files}) == len(files)  # no file is shared
    # A copied database is the one a first start makes: the same schema, every migration, WAL, the user's alone.
    made, copied = proxies["fresh"].db_path, proxies["first"].db_path
    assert _schema(copied) == _schema(made)
    for path in (made, copied, *proxies["first"].config.parent.glob("ca/mitmproxy-*")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path  # the proxy made the copied CA private too
    with sqlite3.connect(copied) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert migrations.applied(db) == [migration.__name__ for migration in migrations.MIGRATIONS]


def test_what_a_test_made_itself_is_left_for_the_proxy_as_it_is(tmp_path):
    own_ca = tmp_path / "own" / "ca"
    own_ca.mkdir(parents=True)
    (own_ca / "mitmproxy-ca.pem").write_text("the test's own CA")
    config = write_config(tmp_path / "own" / "config.toml", own_ca, {})
    (tmp_path / "old.db").write_bytes(b"the test's old database")
    (tmp_path / "left.db-wal").write_bytes(b"a deleted database's log")
    for db_path in (tmp_path / "old.db", tmp_path / "left.db", tmp_path / "no folder" / "meter.db"):
        as_after_a_first_start(config, db_path)
    assert [path.name for path in own_ca.iterdir()] == ["mitmproxy-ca.pem"]
    assert (own_ca / "mitmproxy-ca.pem").read_text() == "the test's own CA"
    assert (tmp_path / "old.db").read_bytes() == b"the test's old database"
    assert not (tmp_path / "left.db").exists() and not (tmp_path / "no folder").exists()
    # A config naming no CA folder: the proxy uses the user's, which the harness leaves alone.
    (tmp_path / "bare.toml").write_text("[upstreams]\n")
    as_after_a_first_start(tmp_path / "bare.toml", tmp_path / "new.db")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bare.toml", "left.db-wal", "new.db", "old.db", "own"]


def test_the_template_database_has_every_migration_when_a_test_cut_the_list_down(tmp_path, monkeypatch):
    every = [migration.__name__ for migration in migrations.MIGRATIONS]
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])  # as a test making an old database does
    migrated._template.cache_clear()  # the template is made now, under the cut list
    migrated.migrated_file(tmp_path / "meter.db")
    with sqlite3.connect(tmp_path / "meter.db") as db:  # read as it is: connection.connect would migrate it
        assert migrations.applied(db) == every
