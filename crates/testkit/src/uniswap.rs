//! Uniswap V2 on the local chain, as published on npm (`@uniswap/v2-core`'s factory and pair,
//! `@uniswap/v2-periphery`'s router and WETH9): the exchange VVS Finance and most EVM DEXes copy. A pool of the
//! test token against WETH is funded by the deployer, so tests trade against real reserves.

use crate::chain::{LocalChain, confirm, deploy_with, deployer, peers_dir};
pub use alloy::primitives::U256;
use alloy::primitives::{Address, Bytes};
use alloy::sol_types::SolValue;
use serde_json::Value;

/// The calls the deployment makes (generated: `addLiquidity` takes eight arguments).
#[allow(clippy::too_many_arguments)]
mod abi {
    alloy::sol! {
        #[sol(rpc)]
        interface Weth9 {
            function deposit() external payable;
            function approve(address spender, uint256 value) external returns (bool);
        }

        #[sol(rpc)]
        interface Erc20 {
            function mint(address to, uint256 value) external;
            function approve(address spender, uint256 value) external returns (bool);
            function allowance(address owner, address spender) external view returns (uint256);
            function balanceOf(address owner) external view returns (uint256);
        }

        #[sol(rpc)]
        interface UniswapV2Factory {
            function getPair(address a, address b) external view returns (address);
        }

        #[sol(rpc)]
        interface UniswapV2Router02 {
            function addLiquidity(address tokenA, address tokenB, uint256 amountADesired, uint256 amountBDesired,
                uint256 amountAMin, uint256 amountBMin, address to, uint256 deadline)
                external returns (uint256 amountA, uint256 amountB, uint256 liquidity);
            function swapExactTokensForTokens(uint256 amountIn, uint256 amountOutMin, address[] path, address to,
                uint256 deadline) external returns (uint256[] amounts);
            function getAmountsOut(uint256 amountIn, address[] path) external view returns (uint256[] amounts);
        }
    }
}
use abi::{Erc20, UniswapV2Factory, UniswapV2Router02, Weth9};

/// The gas limit of a swap sent here, as Paygent's: anvil's bare estimate of a swap is sometimes short of what it
/// uses, and the swap then runs out of gas and reverts.
const SWAP_GAS: u64 = 300_000;

/// The exchange's contracts and the test token's pool against WETH.
#[derive(Debug, Clone, Copy)]
pub struct Uniswap {
    pub weth: Address,
    pub factory: Address,
    pub router: Address,
    pub pair: Address,
}

/// A published contract's creation code, from its npm package's `build/`.
fn creation_code(package: &str, contract: &str) -> Vec<u8> {
    let path = peers_dir().join(format!(
        "node_modules/@uniswap/{package}/build/{contract}.json"
    ));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): run `npm ci --prefix peers`",
            path.display()
        )
    });
    let artifact: Value = serde_json::from_str(&text).expect("an artifact is JSON");
    let hex = artifact["bytecode"].as_str().expect("bytecode");
    let code: Bytes = format!("0x{}", hex.trim_start_matches("0x"))
        .parse()
        .expect("hex");
    code.to_vec()
}

impl LocalChain {
    /// Deploys the exchange from the deployer, and a pool holding `usdc` test tokens and `weth` WETH (in their
    /// units), so one WETH is worth `usdc / weth` test tokens.
    pub async fn uniswap(&self, usdc: U256, weth: U256) -> Uniswap {
        let deployer = deployer();
        let weth_token = deploy_with(&self.provider, creation_code("v2-periphery", "WETH9")).await;
        let factory = deploy_with(
            &self.provider,
            with_args("v2-core", "UniswapV2Factory", deployer.abi_encode()),
        )
        .await;
        let router_args = (factory, weth_token).abi_encode_params();
        let router = deploy_with(
            &self.provider,
            with_args("v2-periphery", "UniswapV2Router02", router_args),
        )
        .await;
        let wrapped = Weth9::new(weth_token, &self.provider);
        confirm(wrapped.deposit().value(weth).send().await).await;
        confirm(wrapped.approve(router, weth).send().await).await;
        let test_token = Erc20::new(self.token, &self.provider);
        confirm(test_token.mint(deployer, usdc).send().await).await;
        confirm(test_token.approve(router, usdc).send().await).await;
        let exchange = UniswapV2Router02::new(router, &self.provider);
        let liquidity = exchange.addLiquidity(
            self.token,
            weth_token,
            usdc,
            weth,
            usdc,
            weth,
            deployer,
            U256::from(u64::MAX),
        );
        confirm(liquidity.send().await).await;
        let pair = UniswapV2Factory::new(factory, &self.provider)
            .getPair(self.token, weth_token)
            .call()
            .await
            .expect("the pool");
        Uniswap {
            weth: weth_token,
            factory,
            router,
            pair,
        }
    }
}

impl Uniswap {
    /// Another trader (the deployer) buys WETH with `usdc` test tokens, moving the pool's price against anyone
    /// buying after it.
    pub async fn buy_weth(&self, chain: &LocalChain, usdc: U256) {
        let test_token = Erc20::new(chain.token, &chain.provider);
        confirm(test_token.mint(deployer(), usdc).send().await).await;
        confirm(test_token.approve(self.router, usdc).send().await).await;
        let path = vec![chain.token, self.weth];
        let exchange = UniswapV2Router02::new(self.router, &chain.provider);
        let far = U256::from(u64::MAX);
        let trade = exchange
            .swapExactTokensForTokens(usdc, U256::ZERO, path, deployer(), far)
            .gas(SWAP_GAS);
        confirm(trade.send().await).await;
    }

    /// The payer lets the router take `value` of its test token, as a person might have before Paygent traded.
    pub async fn allow_router(&self, chain: &LocalChain, value: U256) {
        let payer = chain.as_payer();
        let token = Erc20::new(chain.token, &payer);
        confirm(token.approve(self.router, value).send().await).await;
    }

    /// A trade straight from the payer's wallet, with no guard: what any client must do at least. Quotes `usdc`
    /// test-token units for WETH, approves the router for exactly that, and swaps with the quote less 0.5% as the
    /// least out (and a 300,000 gas limit), waiting for both receipts.
    pub async fn swap_directly(&self, chain: &LocalChain, usdc: U256) {
        let payer = chain.as_payer();
        let exchange = UniswapV2Router02::new(self.router, &payer);
        let path = vec![chain.token, self.weth];
        let quote = exchange.getAmountsOut(usdc, path.clone());
        let out = quote.call().await.expect("a quote")[1];
        let least = out * U256::from(995) / U256::from(1000);
        let token = Erc20::new(chain.token, &payer);
        confirm(token.approve(self.router, usdc).send().await).await;
        let far = U256::from(u64::MAX);
        let trade = exchange
            .swapExactTokensForTokens(usdc, least, path, crate::chain::payer(), far)
            .gas(SWAP_GAS);
        confirm(trade.send().await).await;
    }

    /// What `owner` lets the router take of the test token.
    pub async fn allowance(&self, chain: &LocalChain, owner: Address) -> U256 {
        Erc20::new(chain.token, &chain.provider)
            .allowance(owner, self.router)
            .call()
            .await
            .expect("allowance")
    }

    /// What `owner` holds of WETH, in wei.
    pub async fn weth_of(&self, chain: &LocalChain, owner: Address) -> U256 {
        Erc20::new(self.weth, &chain.provider)
            .balanceOf(owner)
            .call()
            .await
            .expect("balance")
    }
}

fn with_args(package: &str, contract: &str, args: Vec<u8>) -> Vec<u8> {
    let mut code = creation_code(package, contract);
    code.extend(args);
    code
}
