//! One module per resource, each with its own routes.

pub mod approvals;
pub mod audit;
pub mod events;
pub mod executions;
pub mod health;
pub mod keys;
pub mod kill;
pub mod payments;
pub mod policies;
pub mod sessions;
pub mod wallets;
pub mod web;

use crate::error::ApiError;

/// What every handler returns.
pub type ApiResult<T> = Result<T, ApiError>;

/// Default and largest page sizes for list endpoints.
pub const DEFAULT_LIMIT: i64 = 100;
