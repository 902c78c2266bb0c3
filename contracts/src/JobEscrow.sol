// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/**
 * @title JobEscrow
 * @notice Holds what posters lock for their jobs until the marketplace releases it for verified work.
 *
 * A poster's tokens leave the escrow only as payouts released for that job (plus the fee on them), which can
 * never add up to more than the poster funded, or back to the poster. The poster can always take the unspent
 * rest back once the deadline has passed or the job is closed, even when the operator is gone or the contract
 * is paused. Released payouts become credit that its owner withdraws (pull payments).
 *
 * Invariant: `token.balanceOf(this) == Σ remaining(job) + Σ creditOf(account)`.
 *
 * A job id is bound to its poster: its high 20 bytes are the poster's address, the low 12 bytes the marketplace's
 * choice, and only that address may fund it first, so nobody can take a poster's id before them. The first fund
 * also fixes the job's terms: at most `maxPayouts` payouts (indexes 0 … maxPayouts - 1), none above `maxPayout`
 * (the fee comes on top), so no key, the operator's included, can pay a job out in other shares than posted.
 *
 * @dev Only plain ERC-20 tokens are supported: a token that charges a fee on transfer or rebases breaks the
 * invariant. Amounts per job are kept in 128 bits so that a job's bookkeeping fits in one storage slot.
 */
contract JobEscrow is AccessControl, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    bytes32 public constant PAYOUT_ROLE = keccak256("PAYOUT_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    uint16 public constant MAX_FEE_BPS = 1_000;
    uint256 private constant _BPS = 10_000;

    struct Job {
        // Slot 0, read by every call on the job.
        address poster;
        uint64 deadline;
        bool closed;
        // Slot 1, the only slot of the job that release() writes.
        uint128 released;
        uint128 remaining;
        // Slot 2, read once by release() for the terms. uint96 holds 7.9e28 base units (79 billion tokens of
        // 18 decimals) per payout, and uint32 four billion payouts: enough, and the three fill one slot.
        uint128 funded;
        uint96 maxPayout;
        uint32 maxPayouts;
    }

    IERC20 private immutable _token;
    // One slot: release() reads both with one SLOAD.
    address private _treasury;
    uint16 private _feeBps;
    mapping(bytes32 jobId => Job) private _jobs;
    mapping(address account => uint256) private _credits;
    // 256 payout indexes per word: marking one inside a batch is a bit operation on a word held in memory.
    mapping(bytes32 jobId => mapping(uint256 word => uint256 bits)) private _payoutBitmaps;

    event JobFunded(
        bytes32 indexed jobId,
        address indexed poster,
        uint256 amount,
        uint64 deadline,
        uint32 maxPayouts,
        uint96 maxPayout
    );
    event PayoutsReleased(bytes32 indexed jobId, uint256 count, uint256 amount, uint256 fee);
    event JobClosed(bytes32 indexed jobId);
    event JobRefunded(bytes32 indexed jobId, address indexed poster, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);
    event FeeBpsUpdated(uint16 previousFeeBps, uint16 newFeeBps);
    event TreasuryUpdated(address indexed previousTreasury, address indexed newTreasury);

    error EscrowUnknownJob(bytes32 jobId);
    error EscrowJobClosed(bytes32 jobId);
    error EscrowNotPoster(bytes32 jobId, address account);
    error EscrowJobIdNotPoster(bytes32 jobId, address account);
    error EscrowZeroTerms(uint32 maxPayouts, uint96 maxPayout);
    error EscrowTermsMismatch(
        bytes32 jobId,
        uint32 maxPayouts,
        uint96 maxPayout,
        uint32 requestedMaxPayouts,
        uint96 requestedMaxPayout
    );
    error EscrowPayoutIndexOutOfRange(bytes32 jobId, uint256 payoutIndex, uint32 maxPayouts);
    error EscrowPayoutTooLarge(bytes32 jobId, uint256 payoutIndex, uint256 amount, uint96 maxPayout);
    error EscrowZeroAmount();
    error EscrowZeroAddress();
    error EscrowDeadlineInPast(uint64 deadline, uint256 timestamp);
    error EscrowDeadlineMovedEarlier(bytes32 jobId, uint64 currentDeadline, uint64 requestedDeadline);
    error EscrowLengthMismatch(uint256 payoutIndexes, uint256 payees, uint256 amounts);
    error EscrowZeroPayee(bytes32 jobId, uint256 payoutIndex);
    error EscrowInsufficientJobBalance(bytes32 jobId, uint256 needed, uint256 remaining);
    error EscrowRefundTooEarly(bytes32 jobId, uint64 deadline);
    error EscrowNothingToRefund(bytes32 jobId);
    error EscrowInsufficientCredit(address account, uint256 requested, uint256 available);
    error EscrowFeeTooHigh(uint256 feeBps, uint256 maxFeeBps);

    /// @dev `admin` gets the admin and the pauser role; the admin grants `PAYOUT_ROLE` to the operator.
    constructor(IERC20 token_, address treasury_, uint16 feeBps_, address admin) {
        if (address(token_) == address(0) || treasury_ == address(0) || admin == address(0)) {
            revert EscrowZeroAddress();
        }
        if (feeBps_ > MAX_FEE_BPS) revert EscrowFeeTooHigh(feeBps_, MAX_FEE_BPS);
        _token = token_;
        _treasury = treasury_;
        _feeBps = feeBps_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
    }

    // ---------------------------------------------------------------------------------------------- posters

    /**
     * @notice Locks `amount` for `jobId`. The first call, only by the address in the id's high 20 bytes, makes it
     * the job's poster and fixes the terms: at most `maxPayouts` payouts, each at most `maxPayout` (neither zero).
     * Later calls by the poster top it up and must repeat the same terms. `deadline` (unix seconds) must be in
     * the future and may only move later.
     */
    function fund(
        bytes32 jobId,
        uint256 amount,
        uint64 deadline,
        uint32 maxPayouts,
        uint96 maxPayout
    ) external whenNotPaused nonReentrant {
        _fund(jobId, amount, deadline, maxPayouts, maxPayout);
    }

    /// @notice {fund} with an EIP-2612 permit for `amount`, so no separate approve transaction is needed.
    function fundWithPermit(
        bytes32 jobId,
        uint256 amount,
        uint64 deadline,
        uint32 maxPayouts,
        uint96 maxPayout,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external whenNotPaused nonReentrant {
        // Anyone can submit a seen permit first (front-running): if it failed but the allowance is there anyway,
        // go on, as OpenZeppelin's IERC20Permit notes advise; otherwise surface the token's own reason.
        try IERC20Permit(address(_token)).permit(msg.sender, address(this), amount, permitDeadline, v, r, s) {}
        catch (bytes memory reason) {
            if (_token.allowance(msg.sender, address(this)) < amount) {
                assembly ("memory-safe") {
                    revert(add(reason, 0x20), mload(reason))
                }
            }
        }
        _fund(jobId, amount, deadline, maxPayouts, maxPayout);
    }

    /**
     * @notice Sends the job's remaining balance back to its poster, once the deadline has passed or the
     * marketplace closed the job. Stays open while paused.
     */
    function refund(bytes32 jobId) external nonReentrant {
        Job storage job = _jobs[jobId];
        address poster = job.poster;
        if (poster == address(0)) revert EscrowUnknownJob(jobId);
        if (msg.sender != poster) revert EscrowNotPoster(jobId, msg.sender);
        if (!job.closed && block.timestamp <= job.deadline) revert EscrowRefundTooEarly(jobId, job.deadline);
        uint256 amount = job.remaining;
        if (amount == 0) revert EscrowNothingToRefund(jobId);

        job.remaining = 0;
        emit JobRefunded(jobId, poster, amount);
        _token.safeTransfer(poster, amount);
    }

    // ------------------------------------------------------------------------------------------------ nodes

    /// @notice Takes `amount` of the caller's credit out of the escrow. Stays open while paused.
    function withdraw(uint256 amount) external nonReentrant {
        if (amount == 0) revert EscrowZeroAmount();
        uint256 credit = _credits[msg.sender];
        if (amount > credit) revert EscrowInsufficientCredit(msg.sender, amount, credit);

        // Cannot underflow: checked against the credit just above.
        unchecked {
            _credits[msg.sender] = credit - amount;
        }
        emit Withdrawn(msg.sender, amount);
        _token.safeTransfer(msg.sender, amount);
    }

    // ------------------------------------------------------------------------------------------ marketplace

    /**
     * @notice Pays a batch of a job's payouts: for each index never used before, credits its payee `amount`
     * and the treasury the fee on it, and marks the index used. Used indexes are skipped, so re-sending a
     * batch is harmless. The job's remaining balance is debited by the total; the batch reverts if that does
     * not cover it, or if any entry breaks the job's terms (an index >= maxPayouts, an amount > maxPayout).
     */
    function release(
        bytes32 jobId,
        uint256[] calldata payoutIndexes,
        address[] calldata payees,
        uint256[] calldata amounts
    ) external onlyRole(PAYOUT_ROLE) whenNotPaused nonReentrant {
        uint256 n = payoutIndexes.length;
        if (payees.length != n || amounts.length != n) {
            revert EscrowLengthMismatch(n, payees.length, amounts.length);
        }
        Job storage job = _jobs[jobId];
        if (job.poster == address(0)) revert EscrowUnknownJob(jobId);
        if (job.closed) revert EscrowJobClosed(jobId);

        uint256 maxPayouts = job.maxPayouts;
        uint256 maxPayout = job.maxPayout;
        mapping(uint256 word => uint256 bits) storage bitmap = _payoutBitmaps[jobId];
        uint256 feeRate = _feeBps;
        uint256 count;
        uint256 totalAmount;
        uint256 totalFee;
        // The bitmap word in use stays in memory until the batch moves to another word, so a run of
        // consecutive indexes reads and writes its word once. No index maps to word type(uint256).max.
        uint256 wordIndex = type(uint256).max;
        uint256 word;
        bool dirty;
        for (uint256 i; i < n; ) {
            uint256 index = payoutIndexes[i];
            address payee = payees[i];
            uint256 amount = amounts[i];
            if (payee == address(0)) revert EscrowZeroPayee(jobId, index);
            // Every entry obeys the terms, used or not: a batch is accepted or refused as a whole.
            if (index >= maxPayouts) revert EscrowPayoutIndexOutOfRange(jobId, index, uint32(maxPayouts));
            if (amount > maxPayout) revert EscrowPayoutTooLarge(jobId, index, amount, uint96(maxPayout));
            uint256 w = index >> 8;
            if (w != wordIndex) {
                if (dirty) {
                    bitmap[wordIndex] = word;
                    dirty = false;
                }
                wordIndex = w;
                word = bitmap[w];
            }
            uint256 bit = 1 << (index & 0xff);
            if (word & bit == 0) {
                word |= bit;
                dirty = true;
                // amount <= maxPayout < 2**96 and feeRate <= 1000, so amount * feeRate < 2**106, and n (bounded by
                // calldata) such sums stay far below 2**256. A credit stays below the token's total supply: the
                // batch reverts below unless the job's remaining balance, held here, covers every amount.
                // `count` is at most n.
                unchecked {
                    totalAmount += amount;
                    totalFee += (amount * feeRate) / _BPS;
                    _credits[payee] += amount;
                    ++count;
                }
            }
            // i < n.
            unchecked {
                ++i;
            }
        }
        if (dirty) bitmap[wordIndex] = word;

        // Both sums are far below 2**256 (see the loop).
        uint256 total;
        unchecked {
            total = totalAmount + totalFee;
        }
        uint256 remaining = job.remaining;
        if (total > remaining) revert EscrowInsufficientJobBalance(jobId, total, remaining);
        // total <= remaining < 2**128, and released + remaining <= funded < 2**128.
        unchecked {
            job.remaining = uint128(remaining - total);
            job.released += uint128(total);
            // The treasury's credit is part of the token balance held here, like every credit.
            if (totalFee != 0) _credits[_treasury] += totalFee;
        }
        emit PayoutsReleased(jobId, count, totalAmount, totalFee);
    }

    /// @notice Marks the job finished or cancelled: no more payouts or top-ups, and its poster may refund now.
    function close(bytes32 jobId) external onlyRole(PAYOUT_ROLE) {
        Job storage job = _jobs[jobId];
        if (job.poster == address(0)) revert EscrowUnknownJob(jobId);
        if (job.closed) revert EscrowJobClosed(jobId);

        job.closed = true;
        emit JobClosed(jobId);
    }

    // ------------------------------------------------------------------------------------------------ admin

    /// @notice Stops fund, fundWithPermit and release; refund and withdraw stay open.
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    /// @notice Sets the fee on future payouts, in basis points of each payout (at most MAX_FEE_BPS).
    function setFeeBps(uint16 newFeeBps) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newFeeBps > MAX_FEE_BPS) revert EscrowFeeTooHigh(newFeeBps, MAX_FEE_BPS);
        uint16 previous = _feeBps;
        _feeBps = newFeeBps;
        emit FeeBpsUpdated(previous, newFeeBps);
    }

    /// @notice Sets who is credited future fees; fees already credited stay with the previous treasury.
    function setTreasury(address newTreasury) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (newTreasury == address(0)) revert EscrowZeroAddress();
        address previous = _treasury;
        _treasury = newTreasury;
        emit TreasuryUpdated(previous, newTreasury);
    }

    // ------------------------------------------------------------------------------------------------ views

    function jobOf(
        bytes32 jobId
    )
        external
        view
        returns (
            address poster,
            uint256 funded,
            uint256 released,
            uint256 remaining,
            uint64 deadline,
            bool closed,
            uint32 maxPayouts,
            uint96 maxPayout
        )
    {
        Job storage job = _jobs[jobId];
        return (
            job.poster,
            job.funded,
            job.released,
            job.remaining,
            job.deadline,
            job.closed,
            job.maxPayouts,
            job.maxPayout
        );
    }

    function creditOf(address account) external view returns (uint256) {
        return _credits[account];
    }

    function payoutUsed(bytes32 jobId, uint256 index) external view returns (bool) {
        return _payoutBitmaps[jobId][index >> 8] & (1 << (index & 0xff)) != 0;
    }

    function feeBps() external view returns (uint16) {
        return _feeBps;
    }

    function treasury() external view returns (address) {
        return _treasury;
    }

    function token() external view returns (IERC20) {
        return _token;
    }

    // --------------------------------------------------------------------------------------------- internal

    function _fund(bytes32 jobId, uint256 amount, uint64 deadline, uint32 maxPayouts, uint96 maxPayout) private {
        if (amount == 0) revert EscrowZeroAmount();
        if (deadline <= block.timestamp) revert EscrowDeadlineInPast(deadline, block.timestamp);
        if (maxPayouts == 0 || maxPayout == 0) revert EscrowZeroTerms(maxPayouts, maxPayout);
        Job storage job = _jobs[jobId];
        address poster = job.poster;
        if (poster == address(0)) {
            // The id names its poster: a copy of it seen in the mempool is of no use to anyone else.
            if (address(bytes20(jobId)) != msg.sender) revert EscrowJobIdNotPoster(jobId, msg.sender);
            job.poster = msg.sender;
            job.maxPayouts = maxPayouts;
            job.maxPayout = maxPayout;
        } else {
            if (poster != msg.sender) revert EscrowNotPoster(jobId, msg.sender);
            if (job.closed) revert EscrowJobClosed(jobId);
            if (deadline < job.deadline) revert EscrowDeadlineMovedEarlier(jobId, job.deadline, deadline);
            if (maxPayouts != job.maxPayouts || maxPayout != job.maxPayout) {
                revert EscrowTermsMismatch(jobId, job.maxPayouts, job.maxPayout, maxPayouts, maxPayout);
            }
        }

        uint128 funded = SafeCast.toUint128(uint256(job.funded) + amount);
        job.deadline = deadline;
        job.funded = funded;
        // remaining <= funded before this call, so remaining + amount <= the new funded, which fits 128 bits.
        unchecked {
            job.remaining += uint128(amount);
        }
        emit JobFunded(jobId, msg.sender, amount, deadline, maxPayouts, maxPayout);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }
}
