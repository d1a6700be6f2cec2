// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// The part of Multicall3 that x402 facilitators use to explain a failed payment. Tests place its runtime code
/// at Multicall3's canonical address on the local chain, where a real network already has it.
contract Multicall3 {
    struct Call {
        address target;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    function tryAggregate(bool requireSuccess, Call[] calldata calls) external returns (Result[] memory results) {
        results = new Result[](calls.length);
        for (uint256 i = 0; i < calls.length; i++) {
            (bool success, bytes memory ret) = calls[i].target.call(calls[i].callData);
            require(success || !requireSuccess, "Multicall3: call failed");
            results[i] = Result(success, ret);
        }
    }
}
