// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title MiniMulticall — a small Multicall3-compatible batcher for the local dev chain.
/// @notice deploy.mjs installs its runtime code at the canonical Multicall3 address
/// 0xcA11bde05977b3631167028862bE2a173976CA11 (via anvil_setCode). It implements the subset of the
/// Multicall3 ABI that matters here: `tryAggregate` (what the x402 EVM facilitator uses to diagnose
/// failed simulations), `aggregate3` (what viem's `multicall` uses), `aggregate`, and a few views.
/// @dev No constructor and no immutables, so the runtime code works when copied to any address.
contract MiniMulticall {
    struct Call {
        address target;
        bytes callData;
    }

    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    /// Every call must succeed; returns the block number and the raw return data.
    function aggregate(Call[] calldata calls) external payable returns (uint256 blockNumber, bytes[] memory returnData) {
        blockNumber = block.number;
        returnData = new bytes[](calls.length);
        for (uint256 i = 0; i < calls.length; ++i) {
            (bool ok, bytes memory ret) = calls[i].target.call(calls[i].callData);
            require(ok, "MiniMulticall: call failed");
            returnData[i] = ret;
        }
    }

    /// Runs every call; reverts on a failed call only if `requireSuccess`.
    function tryAggregate(bool requireSuccess, Call[] calldata calls) external payable returns (Result[] memory returnData) {
        returnData = new Result[](calls.length);
        for (uint256 i = 0; i < calls.length; ++i) {
            (bool ok, bytes memory ret) = calls[i].target.call(calls[i].callData);
            require(ok || !requireSuccess, "MiniMulticall: call failed");
            returnData[i] = Result(ok, ret);
        }
    }

    /// Runs every call; a failed call reverts the batch unless its `allowFailure` is set.
    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData) {
        returnData = new Result[](calls.length);
        for (uint256 i = 0; i < calls.length; ++i) {
            (bool ok, bytes memory ret) = calls[i].target.call(calls[i].callData);
            require(ok || calls[i].allowFailure, "MiniMulticall: call failed");
            returnData[i] = Result(ok, ret);
        }
    }

    function getBlockNumber() external view returns (uint256) {
        return block.number;
    }

    function getCurrentBlockTimestamp() external view returns (uint256) {
        return block.timestamp;
    }

    function getChainId() external view returns (uint256) {
        return block.chainid;
    }

    function getBasefee() external view returns (uint256) {
        return block.basefee;
    }

    function getEthBalance(address account) external view returns (uint256) {
        return account.balance;
    }
}
