//! Wiring: the shared state every part of the server reads.

use std::sync::Arc;

use kinko_store::Store;

use crate::Config;

/// Shared, read-mostly state. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    /// Account-level xpub for public derivation of deposit addresses (no private key on this side).
    pub deposit_xpub: Arc<bitcoin::bip32::Xpub>,
    /// The hot wallet's lower-case 0x-hex address.
    pub hot_wallet: String,
}
