"""`meter proxy` starts with only the mitmproxy addons it runs (proxy/runner.py's lean_master):
loading DumpMaster's 34 (flask for the mitm.it page, ldap3 for proxy logins, the flow filters)
was a fifth of the CPU of every start. Through a real `meter proxy`, which still meters a call."""

import openai
import pytest

from tests.fake_upstream import FakeUpstream, Scenario
from tests.fixtures import ALL
from tests.proxy_harness import RunningProxy, write_config
from tests.test_start_cost import imported_modules

pytestmark = pytest.mark.e2e

CHAT = {f.name: f for f in ALL}["openai/chat_nonstream_cached_tokens"]
# The modules of the addons the meter runs, and termlog, which mitmproxy's master imports itself.
ADDON_MODULES = {"block", "disable_h2c", "proxyserver", "next_layer", "tlsconfig", "errorcheck", "termlog"}


def test_the_proxy_loads_only_the_mitmproxy_addons_it_runs_and_meters_a_call(tmp_path):
    with FakeUpstream() as upstream:
        upstream.routes["/v1/chat/completions"] = Scenario(body=CHAT.body)
        config = write_config(tmp_path / "config.toml", tmp_path / "ca", {"openai": f"http://127.0.0.1:{upstream.port}"})
        proxy = RunningProxy(config, tmp_path / "meter.db", extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
        try:
            client = openai.OpenAI(base_url=f"{proxy.origin}/openai/v1", api_key="sk-test", max_retries=0)
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            rows = proxy.rows(wait_for=1)
            assert len(rows) == len(upstream.received) == 1  # the call stored exactly once
            assert (rows[0]["input_total"], rows[0]["output_total"]) == (1149, 353)
        finally:
            assert proxy.stop() == 0
    imported = set(imported_modules(proxy.stderr()))
    assert "taskmeter.proxy.runner" in imported, "the proxy's import times were not reported"
    addons = {name.removeprefix("mitmproxy.addons.") for name in imported if name.startswith("mitmproxy.addons.")}
    assert addons == ADDON_MODULES
    assert not {"mitmproxy.tools.dump", "flask", "werkzeug", "ldap3", "mitmproxy.flowfilter"} & imported
