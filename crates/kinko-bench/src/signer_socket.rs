//! A sealed signer served on a Unix socket in this process, for the socket benchmarks: a SQLite store in
//! a tempdir, `kinko init` under a fresh master key split 2-of-3, the [`SignerService`] (the same one
//! `kinko signer serve` runs) on a socket in a background task, unsealed over that socket with two shares.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use kinko_keys::shares::{self, MasterKey, SealConfig};
use kinko_signer::remote::RemoteSigner;
use kinko_signer::server::{self, SignerService};
use kinko_store::Store;

/// Key id of the hot wallet `init` creates.
pub const HOT_KEY_ID: &str = kinko_server::app::HOT_KEY_ID;

pub struct SocketSigner {
    pub store: Store,
    pub service: Arc<SignerService>,
    pub remote: RemoteSigner,
    /// Lower-case 0x address of the hot wallet key.
    pub hot_wallet: String,
    pub socket: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl SocketSigner {
    pub async fn start() -> Result<SocketSigner> {
        let dir = tempfile::tempdir()?;
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("signer.db").display())).await?;
        let mk = MasterKey::generate();
        let names: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
        let raw = shares::split(&mk, 2, &names)?;
        let custody = kinko_server::app::init_sealed(&store, &mk, &SealConfig::new(&mk, 2, &raw)).await?;
        drop(mk);

        let service = Arc::new(
            SignerService::new(store.clone(), vec![HOT_KEY_ID.to_string()])
                .await?
                .with_quorum(kinko_signer::testing::auto_quorum(HOT_KEY_ID, &["ETH"])),
        );
        let socket = dir.path().join("signer.sock");
        let listener = server::bind(&socket).with_context(|| format!("bind {}", socket.display()))?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(server::serve(service.clone(), listener, socket.clone(), stop_rx));

        let remote = RemoteSigner::new(&socket);
        ensure!(remote.status().await?.sealed, "the signer process must start sealed");
        for share in &raw[..2] {
            remote.unseal(share).await?;
        }
        ensure!(!remote.status().await?.sealed, "two of three shares did not unseal the signer");
        Ok(SocketSigner { store, service, remote, hot_wallet: custody.hot_wallet, socket, stop, server, _dir: dir })
    }

    pub async fn stop(self) -> Result<()> {
        self.remote.seal().await?;
        drop(self.remote);
        let _ = self.stop.send(true);
        self.server.await??;
        self.store.close().await;
        Ok(())
    }
}
