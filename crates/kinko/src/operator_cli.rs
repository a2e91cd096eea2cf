//! `kinko operator …`: an operator's approval key and the registry's one-time bootstrap (K8, O2, O4).
//!
//! `kinko operator keygen` runs on the operator's own terminal: the Ed25519 approval key is generated there,
//! sealed with the operator's passphrase (`kinko_keys::operator_key`) and never leaves it; only the public key
//! is printed, for an administrator to register. With `--first-admin` it also writes the registry's genesis
//! change (change 0: the first administrator registering themselves) signed by the new key.
//!
//! `kinko init --first-admin FILE` (or `kinko operator bootstrap --first-admin FILE` for a custody initialised
//! earlier) verifies that file, refuses unless the registry is empty, writes change 0 to the signer's registry
//! log and to the server's copy, and opens the first administrator's account with a one-time enrolment token.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use kinko_core::operator_registry::{RegistryChange, RegistryChangeKind, RegistryState, parse_public_key_hex};
use kinko_core::operators::{Decision, Role, approval_message};
use kinko_keys::operator_key::{self, OperatorKeyFile};
use kinko_server::Config;
use kinko_signer::Approval;
use kinko_store::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Bound on a genesis file (one change and one signature).
pub const GENESIS_FILE_LEN_MAX: u64 = 64 * 1024;
/// How long the first administrator's enrolment token stays usable.
pub const ENROLMENT_TOKEN_TTL_MS: i64 = 72 * 3_600_000;
/// Random bytes in an enrolment token (hex-encoded when shown).
pub const ENROLMENT_TOKEN_BYTES: usize = 32;
/// The terminal recorded for events written by the command line on the custody host itself.
pub const CLI_TERMINAL: &str = "kinko-cli";

#[derive(Subcommand)]
pub enum OperatorCmd {
    /// Generate your approval key on this terminal, sealed with your passphrase. Prints only the public key.
    Keygen {
        /// Your operator id (as the administrator will register it).
        #[arg(long)]
        id: String,
        /// Where to write the encrypted key file (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Read the passphrase from this environment variable instead of prompting (tests, CI).
        #[arg(long)]
        passphrase_env: Option<String>,
        /// Also write the registry's genesis change naming you the first administrator, signed by the new key,
        /// for `kinko init --first-admin`.
        #[arg(long)]
        first_admin: Option<PathBuf>,
    },
    /// Register the first administrator of an initialised custody whose operator registry is empty.
    Bootstrap {
        #[arg(long, short, env = "KINKO_CONFIG")]
        config: PathBuf,
        /// The genesis file written by `kinko operator keygen --first-admin`.
        #[arg(long)]
        first_admin: PathBuf,
    },
}

pub async fn run(cmd: OperatorCmd) -> Result<()> {
    match cmd {
        OperatorCmd::Keygen { id, out, passphrase_env, first_admin } => {
            keygen(&id, &out, passphrase_env.as_deref(), first_admin.as_deref())
        }
        OperatorCmd::Bootstrap { config, first_admin } => {
            let config =
                Config::load(&config).with_context(|| format!("loading configuration {}", config.display()))?;
            let store = Store::connect(&config.database_url).await?;
            bootstrap(&store, &first_admin, kinko_server::clock::now_ms()).await
        }
    }
}

/// A passphrase or password: from the named environment variable, else prompted on the terminal without echo
/// (twice when `confirm`, for a new one).
pub fn read_secret(env: Option<&str>, prompt: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(var) = env {
        let value =
            Zeroizing::new(std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?);
        if value.is_empty() {
            bail!("environment variable {var} is empty");
        }
        return Ok(value);
    }
    let first = Zeroizing::new(rpassword::prompt_password(format!("{prompt}: ")).context("reading from the terminal")?);
    if first.is_empty() {
        bail!("{prompt}: empty");
    }
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password(format!("{prompt} (again): ")).context("reading from the terminal")?,
        );
        if *again != *first {
            bail!("{prompt}: the two entries differ");
        }
    }
    Ok(first)
}

/// The genesis file: change 0 and the first administrator's own signature over its subject.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisFile {
    pub change: RegistryChange,
    pub approvals: Vec<Approval>,
}

fn keygen(id: &str, out: &Path, passphrase_env: Option<&str>, first_admin: Option<&Path>) -> Result<()> {
    // Checked before the passphrase is asked for, so a mistake costs nothing.
    for path in [Some(out), first_admin].into_iter().flatten() {
        if path.exists() {
            bail!("{} exists: refusing to overwrite it", path.display());
        }
    }
    kinko_keys::operator_key::check_operator_id(id)?;
    let passphrase = read_secret(passphrase_env, "passphrase for your approval key", true)?;
    let (file, public_key_hex) = operator_key::generate(id, &passphrase)?;
    let genesis = match first_admin {
        Some(_) => {
            let key = operator_key::open(&file, &passphrase)?;
            Some(genesis_change(id, &key, kinko_server::clock::now_ms())?)
        }
        None => None,
    };
    file.write(out)?;
    if let (Some(path), Some(genesis)) = (first_admin, genesis) {
        write_new_file(path, &serde_json::to_string_pretty(&genesis)?)?;
    }
    println!("{public_key_hex}");
    Ok(())
}

/// Change 0: `id` registers themselves as the first administrator, signed with their new key.
pub fn genesis_change(id: &str, key: &SigningKey, now_ms: i64) -> Result<GenesisFile> {
    let change = RegistryChange {
        seq: 0,
        prev_hash: [0; 32],
        requested_by: id.to_owned(),
        requested_at_ms: now_ms,
        change: RegistryChangeKind::AddOperator {
            operator_id: id.to_owned(),
            approval_public_key_hex: hex::encode(key.verifying_key().as_bytes()),
            role: Role::Administrator,
            expires_at_ms: None,
        },
    };
    let approval = kinko_signer::approvals::sign_approval(key, id, &change.subject()?, Decision::Approve)?;
    Ok(GenesisFile { change, approvals: vec![approval] })
}

fn write_new_file(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(())
}

pub fn read_genesis(path: &Path) -> Result<GenesisFile> {
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if len > GENESIS_FILE_LEN_MAX {
        bail!("{}: over {GENESIS_FILE_LEN_MAX} bytes, not a genesis file", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a genesis file", path.display()))
}

/// Verifies a genesis file on its own: every signature with the key the change registers (there is no other
/// key yet), then the registry's genesis rules. Returns the state after change 0.
pub fn verify_genesis(genesis: &GenesisFile, now_ms: i64) -> Result<RegistryState> {
    let RegistryChangeKind::AddOperator { approval_public_key_hex, .. } = &genesis.change.change else {
        bail!("genesis: change 0 must add the first administrator");
    };
    let key_bytes = parse_public_key_hex(approval_public_key_hex)?;
    let key =
        VerifyingKey::from_bytes(&key_bytes).context("genesis: the approval public key is not an Ed25519 point")?;
    if key.is_weak() {
        bail!("genesis: the approval public key is a weak key");
    }
    let message = approval_message(&genesis.change.subject()?, Decision::Approve)?;
    let mut signers = Vec::new();
    for approval in &genesis.approvals {
        let bytes = hex::decode(&approval.signature_hex).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()).with_context(
            || format!("genesis: approval by {:?}: signature_hex is not 64 hex bytes", approval.operator_id),
        )?;
        // Only the registered key exists: any other signer's approval is forged or misplaced, and refuses the file.
        if approval.operator_id != genesis.change.change.operator_id() {
            bail!("genesis: approval by {:?}, who is not the operator change 0 registers", approval.operator_id);
        }
        key.verify_strict(&message, &Signature::from_bytes(&bytes))
            .map_err(|_| anyhow::anyhow!("genesis: the signature by {:?} does not verify", approval.operator_id))?;
        signers.push(approval.operator_id.clone());
    }
    let mut state = RegistryState::new();
    state.apply(&genesis.change, &signers, now_ms).context("genesis")?;
    Ok(state)
}

/// What `kinko init --first-admin` and `kinko operator bootstrap` do once the custody exists.
pub async fn bootstrap(store: &Store, genesis_path: &Path, now_ms: i64) -> Result<()> {
    let genesis = read_genesis(genesis_path)?;
    verify_genesis(&genesis, now_ms)?;
    let admin = genesis.change.requested_by.clone();
    let token = Zeroizing::new(hex::encode(rand_bytes()));
    write_genesis(store, &genesis, &token, now_ms).await?;
    println!("operator {admin} is registered as the first administrator.");
    println!("enrolment token (shown once, valid {} hours): {}", ENROLMENT_TOKEN_TTL_MS / 3_600_000, *token);
    println!("give it to {admin} over a trusted channel; they enrol with:");
    println!("  kinko ops --server URL enrol --id {admin}");
    Ok(())
}

fn rand_bytes() -> [u8; ENROLMENT_TOKEN_BYTES] {
    use rand::RngCore;
    let mut bytes = [0u8; ENROLMENT_TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Writes change 0 to the signer's registry log, then to the server's copy together with the administrator's
/// account and the audit event (one transaction). The signer's copy first: the server applies a change only
/// after the signer accepted it (architecture, "Operators and approvals").
async fn write_genesis(store: &Store, genesis: &GenesisFile, token: &str, now_ms: i64) -> Result<()> {
    let change = &genesis.change;
    if !store.registry_log().await?.is_empty() {
        bail!("the operator registry is not empty: the first administrator is registered once, at bootstrap");
    }
    let hash_hex = hex::encode(change.hash()?);
    let change_json = serde_json::to_string(change)?;
    let approvals_json = serde_json::to_string(&genesis.approvals)?;
    signer_registry_append(store, change, &genesis.approvals, now_ms).await?;
    let token_hash = hex::encode(Sha256::digest(token.as_bytes()));
    let admin = change.requested_by.as_str();
    let mut tx = store.begin_write().await?;
    kinko_store::operators::append_registry_log_tx(
        &mut tx,
        &kinko_store::operators::RegistryLogRow {
            seq: 0,
            hash: hash_hex.clone(),
            change_json,
            approvals_json,
            applied_at_ms: now_ms,
        },
    )
    .await?;
    kinko_store::operators::create_operator_account_tx(
        &mut tx,
        admin,
        &token_hash,
        now_ms.saturating_add(ENROLMENT_TOKEN_TTL_MS),
        now_ms,
    )
    .await?;
    kinko_store::ops_requests::append_ops_event_tx(
        &mut tx,
        &kinko_store::ops_requests::NewOpsEvent {
            operator_id: admin.to_owned(),
            terminal: CLI_TERMINAL.to_owned(),
            event: "registry_bootstrap".to_owned(),
            request_id: Some(change.request_id()),
            detail_json: serde_json::json!({"seq": 0, "hash": hash_hex, "role": "administrator"}).to_string(),
            at_ms: now_ms,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Appends change 0 to the signer's own registry log, after the signer's own verification of it
/// (`OperatorRegistry::apply_change`, the code the signer replays the log with at startup). A log that already
/// holds exactly this change (an earlier run stopped before the server's copy was written) is left as it is.
async fn signer_registry_append(
    store: &Store,
    change: &RegistryChange,
    approvals: &[Approval],
    now_ms: i64,
) -> Result<()> {
    kinko_signer::approvals::OperatorRegistry::new()
        .apply_change(change, approvals, now_ms)
        .context("the signer's registry refuses the genesis change")?;
    let hash_hex = hex::encode(change.hash()?);
    let existing = store.signer_registry_log().await?;
    match existing.as_slice() {
        [] => {}
        [only] if only.seq == 0 && only.hash_hex == hash_hex => return Ok(()),
        _ => bail!("the signer's operator registry is not empty: the first administrator is registered once"),
    }
    let change_json = serde_json::to_string(change)?;
    let approvals_json = serde_json::to_string(approvals)?;
    store.append_signer_registry(0, &hash_hex, &change_json, &approvals_json, now_ms).await?;
    Ok(())
}

/// Opens a key file for signing: reads it, asks for the passphrase, decrypts.
pub fn open_key_file(path: &Path, passphrase_env: Option<&str>) -> Result<(OperatorKeyFile, SigningKey)> {
    let file = OperatorKeyFile::read(path)?;
    let passphrase = read_secret(passphrase_env, &format!("passphrase for {}", path.display()), false)?;
    let key = operator_key::open(&file, &passphrase)?;
    Ok((file, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_700_000_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn o4_genesis_file_verifies_and_names_the_first_administrator() {
        let genesis = genesis_change("admin1", &key(1), NOW_MS).unwrap();
        let state = verify_genesis(&genesis, NOW_MS).unwrap();
        assert_eq!(state.get("admin1").unwrap().operator.active_roles(NOW_MS), vec![Role::Administrator]);
        let text = serde_json::to_string(&genesis).unwrap();
        let back: GenesisFile = serde_json::from_str(&text).unwrap();
        assert!(verify_genesis(&back, NOW_MS).is_ok());
    }

    #[test]
    fn o4_genesis_with_a_forged_or_foreign_signature_is_refused() {
        let genesis = genesis_change("admin1", &key(1), NOW_MS).unwrap();
        // Signed by another key under admin1's name.
        let mut forged = genesis.clone();
        forged.approvals = genesis_change("admin1", &key(2), NOW_MS).unwrap().approvals;
        assert!(verify_genesis(&forged, NOW_MS).is_err());
        // The change edited after signing (a different operator id).
        let mut edited = genesis.clone();
        edited.change.requested_at_ms += 1;
        assert!(verify_genesis(&edited, NOW_MS).is_err());
        // No signature at all.
        let mut unsigned = genesis.clone();
        unsigned.approvals.clear();
        assert!(verify_genesis(&unsigned, NOW_MS).is_err());
        // A signing manager cannot be the first operator.
        let mut not_admin = genesis_change("admin1", &key(1), NOW_MS).unwrap();
        if let RegistryChangeKind::AddOperator { role, .. } = &mut not_admin.change.change {
            *role = Role::SigningManager;
        }
        not_admin.approvals = vec![
            kinko_signer::approvals::sign_approval(
                &key(1),
                "admin1",
                &not_admin.change.subject().unwrap(),
                Decision::Approve,
            )
            .unwrap(),
        ];
        assert!(verify_genesis(&not_admin, NOW_MS).is_err());
    }
}
