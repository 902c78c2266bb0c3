"""A real chain for the contract tests, Anvil and then Hardhat Network: each started once per session, rewound to a
snapshot after every test.

Every test that touches the chain runs once per engine (`test_x[anvil]`, `test_x[hardhat]`); select one with
`-k "not hardhat"` or `-k hardhat`. Tests that need no chain (the build check, units) run once.

Role fixtures: `admin` (deployer, admin and pauser), `operator` (PAYOUT_ROLE), `poster` and `other_poster`
(funded with tokens), `node` and `other_node` (payees), `stranger` (holds tokens but no role), `treasury`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import Web3
from web3.types import RPCEndpoint

from contracts import devchain
from contracts.bindings import ComputeToken, JobEscrow
from contracts.connection import connect
from contracts.deploy import Deployment, deploy
from contracts.sender import Sender
from tests.contracts.helpers import FEE_BPS, POSTER_TOKENS, TOKENS, Actors, FundedJob, fund_job, job_id


@pytest.fixture(scope="session", params=devchain.ENGINES)
def chain(request: pytest.FixtureRequest) -> Iterator[devchain.DevChain]:
    with devchain.start(engine=request.param) as started:
        yield started


@pytest.fixture(scope="session")
def w3(chain: devchain.DevChain) -> Web3:
    return connect(chain.url)


@pytest.fixture(scope="session")
def actors(w3: Web3) -> Actors:
    keys = devchain.dev_keys(8)
    return Actors(*(Sender(w3, key, receipt_timeout=30) for key in keys))


@pytest.fixture(scope="session")
def deployment(w3: Web3, actors: Actors, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    path = tmp_path_factory.mktemp("chain") / "deployments.json"
    deployed = deploy(
        w3, actors.admin, actors.treasury.address, FEE_BPS, operator=actors.operator.address, deployments_file=path
    )
    token = deployed.token_contract(w3, actors.admin)
    for holder in (actors.poster, actors.other_poster, actors.stranger):
        token.mint(holder.address, POSTER_TOKENS)
    return deployed


@pytest.fixture(autouse=True)
def _rewound(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test that uses the chain starts from the state right after the session's deployment.

    The chain is looked up only for tests that ask for it (directly or through another fixture), so the tests
    without one are not run once per engine.
    """
    if "chain" not in request.fixturenames:
        yield
        return
    w3: Web3 = request.getfixturevalue("w3")
    request.getfixturevalue("deployment")
    actors: Actors = request.getfixturevalue("actors")
    snapshot = w3.provider.make_request(RPCEndpoint("evm_snapshot"), [])["result"]
    yield
    assert w3.provider.make_request(RPCEndpoint("evm_revert"), [snapshot])["result"] is True
    for sender in actors.all():
        sender.forget_nonce()


@pytest.fixture
def admin(actors: Actors) -> Sender:
    return actors.admin


@pytest.fixture
def operator(actors: Actors) -> Sender:
    return actors.operator


@pytest.fixture
def poster(actors: Actors) -> Sender:
    return actors.poster


@pytest.fixture
def other_poster(actors: Actors) -> Sender:
    return actors.other_poster


@pytest.fixture
def node(actors: Actors) -> Sender:
    return actors.node


@pytest.fixture
def other_node(actors: Actors) -> Sender:
    return actors.other_node


@pytest.fixture
def stranger(actors: Actors) -> Sender:
    return actors.stranger


@pytest.fixture
def treasury(actors: Actors) -> Sender:
    return actors.treasury


@pytest.fixture
def token(w3: Web3, deployment: Deployment) -> ComputeToken:
    return deployment.token_contract(w3)


@pytest.fixture
def escrow(w3: Web3, deployment: Deployment) -> JobEscrow:
    return deployment.escrow_contract(w3)


@pytest.fixture
def job(w3: Web3, token: ComputeToken, escrow: JobEscrow, poster: Sender) -> FundedJob:
    """A job the poster funded with 1,000 tokens, deadline in one day, terms MAX_PAYOUTS × MAX_PAYOUT."""
    return fund_job(w3, token, escrow, poster, job_id(poster), 1_000 * TOKENS)
