use paygent_domain::MoneyError;
use paygent_domain::approval::DecisionError;
use paygent_domain::payment::PaymentError;
use paygent_domain::session::SessionConfigError;
use paygent_store::StoreError;

/// What went wrong, in terms an adapter can map to a status code without knowing the cause.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no valid key")]
    Unauthenticated,
    /// A request that must be signed by a third party (Slack) is not, or not recently.
    #[error("{0}")]
    Unsigned(String),
    #[error("{0}")]
    Forbidden(String),
    /// The thing does not exist in the caller's tenant (another tenant's things look the same).
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// The session is frozen by the circuit breaker: nothing of it runs until a person unfreezes it.
    #[error("{0}")]
    Frozen(String),
    /// What was asked for existed once and is gone (e.g. pruned events).
    #[error("{0}")]
    Gone(String),
    /// Well-formed input that breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// A capability that is planned but not built yet.
    #[error("{0}")]
    NotImplemented(String),
    /// A bound on what a key may hold at once was reached (pending approvals): nothing was written.
    #[error("{0}")]
    TooMany(String),
    /// A resource named as a paid one (an x402 URL) answered without asking to be paid: there is nothing to pay,
    /// and its answer is here.
    #[error("{url} answered {status} without asking for payment: there is nothing to pay")]
    Unpaid {
        url: String,
        status: u16,
        body: String,
    },
    /// A chain or service Paygent depends on could not be reached; retrying later is safe.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::KeyNotLive => EngineError::Unauthenticated,
            e => EngineError::Store(e),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

macro_rules! invalid_from {
    ($($t:ty),*) => {$(
        impl From<$t> for EngineError {
            fn from(e: $t) -> Self {
                EngineError::Invalid(e.to_string())
            }
        }
    )*};
}

invalid_from!(MoneyError, PaymentError, SessionConfigError);

impl From<DecisionError> for EngineError {
    fn from(e: DecisionError) -> Self {
        match e {
            DecisionError::NotPending(_) => EngineError::Conflict(e.to_string()),
            _ => EngineError::Invalid(e.to_string()),
        }
    }
}
