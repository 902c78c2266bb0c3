"""docker/deploy_contracts.py (compose's `deploy` one-shot) against a real Anvil: deploy once, then leave it alone."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from pytest_django.fixtures import Settings

from contracts import devchain
from contracts.connection import connect
from contracts.deploy import load_deployment, save_deployment
from tests.deploy.helpers import DOCKER

pytestmark = pytest.mark.slow


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_contracts", DOCKER / "deploy_contracts.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy_contracts = _script()


@pytest.fixture
def use_chain(settings: Settings, tmp_path: Path) -> Callable[[devchain.DevChain], Path]:
    """Point the settings at a chain; the deployments file lives in tmp_path (the compose `chain` volume)."""
    deployments = tmp_path / "chain" / "deployments.json"

    def use(chain: devchain.DevChain) -> Path:
        settings.ETH_RPC_URL = chain.url
        settings.CHAIN_DEPLOYMENTS_FILE = deployments
        return deployments

    return use


@pytest.fixture
def anvil() -> Iterator[devchain.DevChain]:
    with devchain.start() as chain:
        yield chain


def test_it_deploys_once_and_later_runs_change_nothing(
    anvil: devchain.DevChain, use_chain: Callable[[devchain.DevChain], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    deployments = use_chain(anvil)
    assert deploy_contracts.main(["--fee-bps", "100"]) == 0
    first = load_deployment(deployments, devchain.ANVIL_CHAIN_ID)
    assert first.fee_bps == 100  # its arguments went to `chain deploy`
    block = connect(anvil.url).eth.block_number

    assert deploy_contracts.main([]) == 0
    assert load_deployment(deployments, devchain.ANVIL_CHAIN_ID) == first
    assert connect(anvil.url).eth.block_number == block  # not one transaction sent
    assert "nothing to do" in capsys.readouterr().out


def test_it_deploys_again_when_the_local_chain_was_reset(
    use_chain: Callable[[devchain.DevChain], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with devchain.start() as old:
        deployments = use_chain(old)
        assert deploy_contracts.main([]) == 0
    with devchain.start() as fresh:  # a new chain: the recorded addresses hold no code
        use_chain(fresh)
        assert deploy_contracts.main([]) == 0
        redeployed = load_deployment(deployments, devchain.ANVIL_CHAIN_ID)
        assert connect(fresh.url).eth.get_code(redeployed.escrow)
    assert "was reset" in capsys.readouterr().out


def test_on_another_chain_it_refuses_to_deploy_over_a_recorded_deployment_without_code(
    use_chain: Callable[[devchain.DevChain], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with devchain.start() as local:
        deployments = use_chain(local)
        assert deploy_contracts.main([]) == 0
        recorded = load_deployment(deployments, devchain.ANVIL_CHAIN_ID)
    other_chain = 4242
    save_deployment(deployments, dataclasses.replace(recorded, chain_id=other_chain))
    with devchain.start(chain_id=other_chain) as remote:
        use_chain(remote)
        assert deploy_contracts.main([]) == 1
        assert connect(remote.url).eth.block_number == 0
    assert "no code there" in capsys.readouterr().err
