// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/**
 * @title ComputeToken
 * @notice The token Hashwork jobs are paid in: a plain ERC-20 (18 decimals, no transfer fee, no hooks) with
 * EIP-2612 permit, so a poster can approve and fund an escrow in one transaction.
 * @dev Holders of `MINTER_ROLE` mint; on a local chain that is the dev faucet (`manage.py chain faucet`).
 */
contract ComputeToken is ERC20, ERC20Permit, AccessControl {
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @dev `admin` gets the admin and the minter role.
    constructor(address admin) ERC20("Hashwork Compute", "HWC") ERC20Permit("Hashwork Compute") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MINTER_ROLE, admin);
    }

    /// @notice Creates `amount` base units for `to`.
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }
}
