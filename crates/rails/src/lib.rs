//! Paygent's payment rails on EVM chains: ERC-20 transfers and the x402 client (v1 and v2), with EIP-712
//! signatures made here, behind the guard. `x402-reqwest` would pay on any 402 by itself; this crate signs only
//! what the engine has authorized, and the engine stores it before it is sent.

pub mod config;
mod evm;
mod swap;
mod tool;
mod trade;
pub mod x402;

pub use config::{
    ChainConfig, ConfigError, DexConfig, DexKind, Eip712Name, RailsConfig, TokenConfig,
};
pub use evm::{EvmRails, from_units, sign_authorization, to_units};
pub use swap::SwapQuote;
pub use tool::BalanceTool;

use paygent_engine::Paygent;

/// Puts the rails behind an engine: they price the x402 resources its guard decides on, carry out the payments
/// it authorizes, and `balance` reads the session wallet's balances.
pub fn install(paygent: Paygent, rails: EvmRails) -> Paygent {
    let mut tools = paygent.tools().clone();
    tools.register(BalanceTool);
    paygent.with_tools(tools).with_rail(rails)
}
